"""SET_MEMSEG / UNSET_MEMSEG, the kernel side (``drivers/virt/acrn/mm.c: acrn_vm_memseg_map``)."""

from __future__ import annotations

import errno
import mmap

import pytest

from acrn import uapi
from acrn.emu.hv.vm import EptRegion

from .hsm_support import Env, HypercallSpy, env_fixture, readonly_copy

env = pytest.fixture(env_fixture)

SET, UNSET = uapi.ACRN_IOCTL_SET_MEMSEG, uapi.ACRN_IOCTL_UNSET_MEMSEG
RAM, MMIO = uapi.ACRN_MEMMAP_RAM, uapi.ACRN_MEMMAP_MMIO


def memmap(type_: int, gpa: int, host: int, length: int, attr: int = 7) -> uapi.acrn_vm_memmap:
    m = uapi.acrn_vm_memmap(type=type_, attr=attr, user_vm_pa=gpa, len=length)
    m.vma_base = host
    return m


def test_ram_maps_the_pinned_range_write_back(env: Env) -> None:
    env.create()
    ram = env.mem(1 << 16)
    # Caller's type bits (UC) are ignored: RAM is always WB; only the access bits are used.
    assert env.dev.ioctl(SET, memmap(RAM, 0x100000, ram.addr, 1 << 16, attr=uapi.ACRN_MEM_TYPE_UC | 5)) == 0
    assert env.vm().memory_regions == [EptRegion(0x100000, ram.addr, 1 << 16, 5, uapi.ACRN_MEM_TYPE_WB)]


def test_ram_issues_one_batch_hypercall(env: Env) -> None:
    vmid = env.create()
    ram = env.mem(1 << 14)
    spy = HypercallSpy(env.machine)
    env.dev.ioctl(SET, memmap(RAM, 0, ram.addr, 1 << 14))
    ((hcid, p1, p2, ret),) = spy.calls
    # param1 is the batch header (a kernel copy), param2 unused; the vmid travels in the header.
    assert (hcid, p2, ret) == (uapi.HC_VM_SET_MEMORY_REGIONS, 0, 0)
    assert p1 not in (0, vmid)
    assert env.vm(vmid).gpa2hpa(0x2000) == ram.addr + 0x2000


def test_ram_len_is_truncated_to_pages(env: Env) -> None:
    env.create()
    ram = env.mem(3 * 4096)
    env.dev.ioctl(SET, memmap(RAM, 0, ram.addr, 2 * 4096 + 100))
    assert [r.size for r in env.vm().memory_regions] == [2 * 4096]


def test_ram_offset_in_first_page_is_dropped(env: Env) -> None:
    # pin_user_pages_fast starts at the page holding vma_base: the guest sees that page's start,
    # and the pinned (and unpinned at destroy) range is page-aligned.
    env.create()
    ram = env.mem(2 * 4096)
    env.dev.ioctl(SET, memmap(RAM, 0x10000, ram.addr + 100, 4096))
    assert env.vm().memory_regions == [EptRegion(0x10000, ram.addr, 4096, 7, uapi.ACRN_MEM_TYPE_WB)]
    assert env.vm().gpa2hpa(0x10000) == ram.addr
    assert env.machine.hsm.pins.count() == 2  # the ioreq page and this one
    env.dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM)
    env.dev.ioctl(uapi.ACRN_IOCTL_DESTROY_VM)
    assert env.machine.hsm.pins.count() == 0


def test_ram_less_than_a_page_is_einval(env: Env) -> None:
    env.create()
    ram = env.mem()
    assert env.err(SET, memmap(RAM, 0, ram.addr, 4095)) == errno.EINVAL
    assert env.vm().memory_regions == []


def test_ram_unmapped_vma_base_is_efault(env: Env) -> None:
    env.create()
    assert env.err(SET, memmap(RAM, 0, 0x1000, 4096)) == errno.EFAULT


def test_ram_partly_unmapped_range_is_efault(env: Env) -> None:
    env.create()
    ram = env.mem(4096)
    assert env.err(SET, memmap(RAM, 0, ram.addr, 1 << 30)) == errno.EFAULT
    assert env.machine.hsm.pins.count() == 1  # only the ioreq page stays pinned


def test_ram_is_pinned_for_write_even_for_read_only_access(env: Env) -> None:
    env.create()
    ro = env.keep(readonly_copy(b""))
    assert env.err(SET, memmap(RAM, 0, ro.addr, 4096, attr=uapi.ACRN_MEM_ACCESS_READ)) == errno.EFAULT


def test_ram_mappings_are_limited_to_256(env: Env) -> None:
    env.create()
    ram = env.mem(257 * 4096)
    for i in range(256):
        env.dev.ioctl(SET, memmap(RAM, i * 4096, ram.addr + i * 4096, 4096))
    assert env.err(SET, memmap(RAM, 256 * 4096, ram.addr + 256 * 4096, 4096)) == errno.ENOMEM
    assert len(env.vm().memory_regions) == 256


def test_ram_hypercall_failure_is_returned_and_undone(env: Env) -> None:
    # A running RTVM fails the severity check of SET_MEMORY_REGIONS with -1: EPERM.
    env.create(b"POST_RT_VM1")
    env.dev.ioctl(uapi.ACRN_IOCTL_START_VM)
    ram = env.mem()
    assert env.err(SET, memmap(RAM, 0, ram.addr, 4096)) == errno.EPERM
    assert env.machine.hsm.pins.count() == 1  # unpinned again; the ioreq page stays
    assert env.machine.hsm.vms[0].regions_mapping_count == 0


def test_ram_mapping_count_is_not_reset_by_destroy(env: Env) -> None:
    env.create(b"one")
    ram = env.mem(256 * 4096)
    for i in range(256):
        env.dev.ioctl(SET, memmap(RAM, i * 4096, ram.addr + i * 4096, 4096))
    env.dev.ioctl(uapi.ACRN_IOCTL_PAUSE_VM)
    env.dev.ioctl(uapi.ACRN_IOCTL_DESTROY_VM)
    assert env.machine.hsm.pins.count() == 0
    env.create(b"two")
    assert env.err(SET, memmap(RAM, 0, ram.addr, 4096)) == errno.ENOMEM


def test_mmio_maps_uncached_whatever_the_type_bits(env: Env) -> None:
    env.create()
    bar = env.mem()
    assert env.dev.ioctl(SET, memmap(MMIO, 0xC0000000, bar.addr, 4096, attr=uapi.ACRN_MEM_TYPE_WB | 3)) == 0
    assert env.vm().memory_regions == [EptRegion(0xC0000000, bar.addr, 4096, 3, uapi.ACRN_MEM_TYPE_UC)]


def test_mmio_is_not_pinned(env: Env) -> None:
    env.create()
    bar = env.mem()
    env.dev.ioctl(SET, memmap(MMIO, 0xC0000000, bar.addr, 4096))
    assert env.machine.hsm.pins.count() == 1  # the ioreq page only


def test_mmio_hypervisor_error_is_returned(env: Env) -> None:
    env.create()
    bar = env.mem()
    # A size that is not a page multiple: -EINVAL from the hypervisor's region check.
    assert env.err(SET, memmap(MMIO, 0xC0000000, bar.addr, 100)) == errno.EINVAL


def test_unset_memseg_removes_mmio(env: Env) -> None:
    env.create()
    bar = env.mem()
    env.dev.ioctl(SET, memmap(MMIO, 0xC0000000, bar.addr, 4096))
    spy = HypercallSpy(env.machine)
    assert env.dev.ioctl(UNSET, memmap(MMIO, 0xC0000000, 0xDEAD000, 4096)) == 0
    assert env.vm().memory_regions == []
    assert spy.ids() == [uapi.HC_VM_SET_MEMORY_REGIONS]


def test_unset_memseg_refuses_ram(env: Env) -> None:
    env.create()
    ram = env.mem()
    env.dev.ioctl(SET, memmap(RAM, 0, ram.addr, 4096))
    assert env.err(UNSET, memmap(RAM, 0, ram.addr, 4096)) == errno.EINVAL
    assert len(env.vm().memory_regions) == 1


@pytest.mark.parametrize("cmd", [SET, UNSET])
def test_memseg_other_type_is_einval(env: Env, cmd: int) -> None:
    env.create()
    ram = env.mem()
    spy = HypercallSpy(env.machine)
    assert env.err(cmd, memmap(2, 0, ram.addr, 4096)) == errno.EINVAL
    assert spy.calls == []


def test_memseg_short_buffer_is_efault(env: Env) -> None:
    env.create()
    assert env.err(SET, bytearray(31)) == errno.EFAULT


def test_ram_unmapped_after_protect_none_is_efault(env: Env) -> None:
    env.create()
    ram = env.mem()
    ram.protect(0)  # PROT_NONE
    assert env.err(SET, memmap(RAM, 0, ram.addr, 4096)) == errno.EFAULT
    ram.protect(mmap.PROT_READ | mmap.PROT_WRITE)
