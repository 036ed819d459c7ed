"""The fuzz harness' own memory safety (issue 7): no driver write may corrupt what it checks, or the process.

Each hazard is fixed once, in :class:`harness.AddressPool`, which both drivers use: struct bytes
written into a live ioreq page (a false slot-state finding), a stale page handed to CREATE_VM (stale
bytes read as slot states), and a copy_to_user running off the end of the scratch area (a write
into whatever mapping is next).  The hazards are shown through the hypothesis driver's own rules.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator

import pytest

from acrn import uapi
from acrn.emu.hsm import HsmFile
from acrn.emu.service_vm_memory import read_maps

from .harness import PAGE, check_invariants
from .test_hsm_fuzz import HsmFuzz

REGS = uapi.ACRN_IOCTL_SET_VCPU_REGS
#: A new VM's ioreq page: zeroes, with every slot FREE.
FRESH_PAGE = bytes(uapi.acrn_io_request(processed=uapi.ACRN_IOREQ_STATE_FREE)) * uapi.ACRN_IO_REQUEST_MAX


@pytest.fixture
def fuzz() -> Iterator[HsmFuzz]:
    """The hypothesis state machine, driven rule by rule; its teardown checks that nothing is left."""
    m = HsmFuzz()
    yield m
    m.teardown()


def _open_fd(fuzz: HsmFuzz) -> HsmFile:
    f = fuzz.open_fd()
    assert isinstance(f, HsmFile)  # the rule's declared type is hypothesis' (a Bundle target)
    return f


def _open_vm(fuzz: HsmFuzz, page: int) -> HsmFile:
    """The open_vm rule: CREATE_VM with ioreq page ``page``, RAM at the next one, registers set."""
    f = fuzz.open_vm(name=b"", page=page)
    assert isinstance(f, HsmFile)
    return f


def _page(fuzz: HsmFuzz, i: int) -> bytes:
    return ctypes.string_at(fuzz.pool.page(i), PAGE)


def _create_vm(fuzz: HsmFuzz, ioreq_buf: int) -> int:
    """A CREATE_VM on a new fd; its vmid."""
    f = _open_fd(fuzz)
    req = uapi.acrn_vm_creation()
    req.ioreq_buf = ioreq_buf
    assert fuzz.ioctl(f, uapi.ACRN_IOCTL_CREATE_VM, req) == 0
    return int(req.vmid)


# ------------------------------------------------------------------------------ (1) live ioreq pages
def test_struct_pointer_never_lands_in_a_live_ioreq_page(fuzz: HsmFuzz) -> None:
    """random_struct's raw pointer (scratch page 7) while page 7 is a VM's ioreq page: moved elsewhere."""
    f = _open_vm(fuzz, 7)
    assert f.vm.ioreq_buf == fuzz.pool.page(7)
    before = _page(fuzz, 7)
    fuzz.random_struct(f, REGS, b"\xff" * ctypes.sizeof(uapi.acrn_vcpu_regs), 1)
    assert _page(fuzz, 7) == before
    check_invariants(fuzz.machine, fuzz.files, fuzz.accel)


def test_monitor_word_never_lands_in_a_live_ioreq_page(fuzz: HsmFuzz) -> None:
    """intr_monitor picking the live ioreq page: the command word goes to another page."""
    f = _open_vm(fuzz, 7)
    before = _page(fuzz, 7)
    fuzz.intr_monitor(f, page=7, offset=0, cmd=3, cnt=20)
    assert _page(fuzz, 7) == before
    assert f.vm.monitor_page is None or f.vm.monitor_page != fuzz.pool.page(7)
    check_invariants(fuzz.machine, fuzz.files, fuzz.accel)


@pytest.mark.parametrize("live", range(8))
def test_safe_ptr_write_back_never_reaches_a_live_ioreq_page(fuzz: HsmFuzz, live: int) -> None:
    """For every scratch pointer, a page-long write-back after it misses the ioreq page."""
    _create_vm(fuzz, fuzz.pool.page(live))
    ioreq = fuzz.pool.page(live)
    for i in range(fuzz.pool.SCRATCH_PAGES):
        for off in (0, 8, PAGE - 8):
            ptr = fuzz.pool.safe_ptr(fuzz.pool.page(i) + off)
            assert fuzz.pool.in_scratch(ptr)
            assert ptr + PAGE <= ioreq or ptr >= ioreq + PAGE, hex(ptr - ioreq)
            assert ptr % PAGE == off  # the misalignment is kept


# ------------------------------------------------------------------------------ (2) zeroed ioreq pages
@pytest.mark.parametrize("rule", ["create_vm", "open_vm"])
def test_create_vm_page_is_zero_in_every_slot(fuzz: HsmFuzz, rule: str) -> None:
    """Stale bytes in the page the pool hands to CREATE_VM are gone: every slot FREE (0)."""
    ctypes.memset(fuzz.pool.page(3), 0xA5, PAGE)  # as an earlier step's struct could leave them
    if rule == "create_vm":
        f = _open_fd(fuzz)
        fuzz.create_vm(f, name=b"", page=3, offset=0, reserved=0, affinity=0, flag=0, form=0)
    else:
        f = _open_vm(fuzz, 3)
    assert f.vm.valid and f.vm.ioreq_buf == fuzz.pool.page(3)
    # The hypervisor marks every slot FREE (hcall_set_ioreq_buffer); all else must be the zeroes handed out.
    assert _page(fuzz, 3) == FRESH_PAGE
    check_invariants(fuzz.machine, fuzz.files, fuzz.accel)


def test_pool_hands_out_a_zeroed_ioreq_page(fuzz: HsmFuzz) -> None:
    ctypes.memset(fuzz.pool.page(5), 0xA5, PAGE)
    addr = fuzz.pool.safe_ioreq_buf(fuzz.pool.page(5) + 12)
    assert addr == fuzz.pool.page(5) + 12  # the misaligned ioreq_buf is kept (only its page is pinned)
    assert _page(fuzz, 5) == bytes(PAGE)


def test_create_vm_page_is_never_the_page_of_its_own_struct(fuzz: HsmFuzz) -> None:
    """CREATE_VM by raw pointer (page 7) naming page 7 as ioreq_buf: the write-back would land in a slot."""
    f = _open_fd(fuzz)
    fuzz.create_vm(f, name=b"", page=7, offset=0, reserved=0, affinity=0, flag=0, form=1)
    assert f.vm.valid and f.vm.ioreq_buf is not None
    assert f.vm.ioreq_buf != fuzz.pool.page(7)
    assert ctypes.string_at(f.vm.ioreq_buf, PAGE) == FRESH_PAGE


def test_live_ioreq_page_is_shared_not_wiped(fuzz: HsmFuzz) -> None:
    """A second CREATE_VM on a live ioreq page shares it (acrn-dm never does; the kernel allows it)."""
    vmid = _create_vm(fuzz, fuzz.pool.page(2))
    slot = fuzz.machine.hv.ioreq_slot(vmid, 0)
    assert slot is not None
    slot.processed = uapi.ACRN_IOREQ_STATE_PENDING
    assert fuzz.pool.safe_ioreq_buf(fuzz.pool.page(2)) == fuzz.pool.page(2)
    assert slot.processed == uapi.ACRN_IOREQ_STATE_PENDING


# ------------------------------------------------------------------------------ (3) the scratch guard
def test_scratch_area_is_fenced_by_guard_pages(fuzz: HsmFuzz) -> None:
    """The page before and the page after the scratch area are mapped PROT_NONE: nothing else lies there."""
    for addr in (fuzz.pool.lo - 1, fuzz.pool.hi):
        guard = [m for m in read_maps() if m.start <= addr < m.end]
        assert guard and not guard[0].readable and not guard[0].writable, hex(addr)


def test_get_ioctl_output_across_the_end_of_scratch_is_efault(fuzz: HsmFuzz) -> None:
    """PM_GET_CPU_STATE reads 8 bytes and writes 32 (a C-state): at the last 8 bytes the copy faults."""
    vmid = _create_vm(fuzz, fuzz.pool.page(0))
    f = fuzz.files[-1]
    cmd = uapi.pm_cmd(vmid, 0, 1, uapi.ACRN_PMCMD_GET_CX_DATA).to_bytes(8, "little")
    inside = fuzz.pool.hi - ctypes.sizeof(uapi.acrn_cstate_data)
    ctypes.memmove(inside, cmd, 8)
    assert f.ioctl(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, inside) == 0  # the same call, in bounds, works
    last = fuzz.pool.hi - 8
    ctypes.memmove(last, cmd, 8)
    with pytest.raises(OSError) as e:
        f.ioctl(uapi.ACRN_IOCTL_PM_GET_CPU_STATE, last)
    assert e.value.errno == errno.EFAULT
    assert ctypes.string_at(last, 8) == cmd  # nothing of the C-state was written


def test_struct_placed_at_the_end_of_scratch_is_cut_at_the_guard(fuzz: HsmFuzz) -> None:
    """place() near the end writes only up to the guard; the kernel's read of the struct is EFAULT."""
    f = _open_vm(fuzz, 0)
    last = fuzz.pool.hi - 8
    assert fuzz.pool.place(REGS, b"\x5a" * ctypes.sizeof(uapi.acrn_vcpu_regs), last) == last
    assert ctypes.string_at(last, 8) == b"\x5a" * 8
    with pytest.raises(OSError) as e:
        f.ioctl(REGS, last)
    assert e.value.errno == errno.EFAULT


# ------------------------------------------------------------------------------ address kinds kept
def test_refused_addresses_are_passed_through_unchanged(fuzz: HsmFuzz) -> None:
    """NULL, PROT_NONE, read-only, non-canonical and kernel addresses still reach the emulator."""
    pool = fuzz.pool
    for addr in pool.bad:
        assert pool.safe_ptr(addr) == addr, hex(addr)
        assert pool.safe_monitor(addr) == addr, hex(addr)
        assert pool.safe_ioreq_buf(addr) == addr, hex(addr)
    for guard in (pool.lo - PAGE, pool.hi):
        assert pool.safe_ptr(guard) == guard


def test_writable_address_outside_the_pool_is_moved_into_scratch(fuzz: HsmFuzz) -> None:
    heap = ctypes.create_string_buffer(64)
    addr = ctypes.addressof(heap)
    assert fuzz.pool.in_scratch(fuzz.pool.safe_ptr(addr))
    assert fuzz.pool.in_scratch(fuzz.pool.safe_monitor(addr) & ~(PAGE - 1), PAGE)
    assert fuzz.pool.in_scratch(fuzz.pool.safe_ioreq_buf(addr) & ~(PAGE - 1), PAGE)
    assert heap.raw == bytes(64)
