"""The shared fuzzing harness for the emulated HSM ioctl surface (the rules of docs/ioctls.md).

Used by the hypothesis state machine (``test_hsm_fuzz.py``) and by the atheris driver
(``atheris_hsm.py``).  It provides:

* :class:`NullAccelerator`: an accelerator whose vCPUs "spin" until kicked, so START/PAUSE/RESET/
  DESTROY and release exercise the runtime's threads without running real guest code;
* :class:`AddressPool`: user addresses of every kind the kernel may be handed (mapped read-write
  scratch pages, a read-only page, a PROT_NONE page, NULL, non-canonical and kernel addresses,
  misaligned offsets).  The emulator writes through some of them (the ioreq page, the interrupt
  monitor page, copy_to_user), so both drivers pass every argument through
  :meth:`AddressPool.make_safe`: writable addresses land in the pool's guarded scratch pages and
  never in a live ioreq page, and a new ioreq page starts zeroed;
* :data:`ALLOWED_ERRNO`: for every ioctl, the errno values docs/ioctls.md allows (per ioctl
  plus ``acrn_dev_ioctl``'s preamble); anything else is a finding;
* :func:`check_invariants` and :func:`check_released`: the state-machine, slot-state and
  resource-accounting invariants that must hold after every step and after every fd is closed.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from dataclasses import dataclass, field

from acrn import uapi
from acrn.arch import CpuState
from acrn.emu.accel.base import KickExit, VmExit
from acrn.emu.hsm import HsmFile
from acrn.emu.hv import VcpuState, VmState
from acrn.emu.machine import Machine
from acrn.emu.service_vm_memory import is_mapped

PAGE = mmap.PAGESIZE

E = errno
_HV = {E.EPERM, E.ENOTTY}  # a bare -1 from the hypervisor, or an unreachable target (docs/ioctls.md)
_STRUCT_HV = {E.EFAULT, E.ENOMEM, E.EINVAL} | _HV
#: Per ioctl (docs/ioctls.md): what each may fail with once the fd has a VM (before CREATE_VM every
#: command, known or not, is EINVAL; unknown commands are ENOTTY: acrn_dev_ioctl).
ALLOWED_ERRNO: dict[int, set[int]] = {
    # Every hypervisor failure is folded into EINVAL (acrn_dev_ioctl, CREATE_VM case).
    uapi.ACRN_IOCTL_CREATE_VM: {E.EFAULT, E.ENOMEM, E.EINVAL},
    uapi.ACRN_IOCTL_DESTROY_VM: _HV,
    uapi.ACRN_IOCTL_START_VM: _HV,
    uapi.ACRN_IOCTL_PAUSE_VM: _HV,
    uapi.ACRN_IOCTL_RESET_VM: _HV,
    uapi.ACRN_IOCTL_SET_VCPU_REGS: _STRUCT_HV,
    uapi.ACRN_IOCTL_INJECT_MSI: _STRUCT_HV,
    uapi.ACRN_IOCTL_VM_INTR_MONITOR: {E.EFAULT, E.EINVAL} | _HV,
    uapi.ACRN_IOCTL_SET_IRQLINE: _HV,
    uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH: {E.EFAULT, E.EINVAL} | _HV,
    uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT: {E.EEXIST, E.EINVAL},
    uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT: {E.ENODEV},
    uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT: set(),
    uapi.ACRN_IOCTL_CLEAR_VM_IOREQ: set(),
    uapi.ACRN_IOCTL_SET_MEMSEG: _STRUCT_HV,
    uapi.ACRN_IOCTL_UNSET_MEMSEG: _STRUCT_HV,
    uapi.ACRN_IOCTL_SET_PTDEV_INTR: _STRUCT_HV,
    uapi.ACRN_IOCTL_RESET_PTDEV_INTR: _STRUCT_HV,
    # vpci_assign/deassign_pcidev report an unknown or busy physical device as -ENODEV.
    uapi.ACRN_IOCTL_ASSIGN_PCIDEV: _STRUCT_HV | {E.ENODEV},
    uapi.ACRN_IOCTL_DEASSIGN_PCIDEV: _STRUCT_HV | {E.ENODEV},
    uapi.ACRN_IOCTL_ASSIGN_MMIODEV: _STRUCT_HV,
    uapi.ACRN_IOCTL_DEASSIGN_MMIODEV: _STRUCT_HV,
    uapi.ACRN_IOCTL_CREATE_VDEV: _STRUCT_HV,
    uapi.ACRN_IOCTL_DESTROY_VDEV: _STRUCT_HV,
    uapi.ACRN_IOCTL_PM_GET_CPU_STATE: {E.EFAULT, E.ENOMEM, E.EINVAL} | _HV,
    uapi.ACRN_IOCTL_IOEVENTFD: {E.EFAULT, E.EINVAL, E.EBADF, E.ENOMEM, E.EEXIST},
    uapi.ACRN_IOCTL_IRQFD: {E.EFAULT, E.EINVAL, E.EBADF, E.ENOMEM, E.EBUSY},
}
IOCTLS: list[int] = sorted(ALLOWED_ERRNO)
#: Commands with no handler: ENOTTY once a VM exists (another type, another number, a bad size).
UNKNOWN_IOCTLS: list[int] = [
    0,
    0xFFFFFFFF,
    (uapi.ACRN_IOCTL_TYPE << 8) | 0x99,
    uapi.ACRN_IOCTL_CREATE_VM ^ (1 << 16),  # the right number with a wrong size field
    uapi.ACRN_IOCTL_START_VM ^ (0xA2 << 8) ^ (0xAE << 8),  # KVM's type byte
]


def allowed(cmd: int, has_vm: bool) -> set[int]:
    """The errno values an ioctl may fail with (acrn_dev_ioctl's preamble, then docs/ioctls.md)."""
    if not has_vm and cmd != uapi.ACRN_IOCTL_CREATE_VM:
        return {E.EINVAL}
    if cmd not in ALLOWED_ERRNO:
        return {E.ENOTTY}
    return ALLOWED_ERRNO[cmd]


# ------------------------------------------------------------------------------ null accelerator
class NullVcpu:
    """A vCPU that spins in the guest until kicked (each run returns KickExit once kicked)."""

    def __init__(self, vcpu_id: int) -> None:
        self.vcpu_id = vcpu_id
        self._kicked = threading.Event()
        self._state = CpuState()
        self.closed = False

    def set_state(self, state: CpuState) -> None:
        self._state = state.copy()

    def get_state(self) -> CpuState:
        return self._state.copy()

    def run(self) -> VmExit:
        self._kicked.wait()
        self._kicked.clear()
        return KickExit()

    def complete_read(self, value: int) -> None:
        pass

    def kick(self) -> None:
        self._kicked.set()

    def close(self) -> None:
        self.closed = True
        self._kicked.set()


@dataclass
class NullVm:
    name: str = "null"
    slots: dict[tuple[int, int], int] = field(default_factory=dict)
    vcpus: list[NullVcpu] = field(default_factory=list)
    closed: bool = False

    def map_memory(self, gpa: int, size: int, host_addr: int, *, writable: bool = True) -> None:
        self.slots[(gpa, size)] = host_addr

    def unmap_memory(self, gpa: int, size: int) -> None:
        self.slots.pop((gpa, size), None)

    def create_vcpu(self, vcpu_id: int, apic_id: int | None = None) -> NullVcpu:
        v = NullVcpu(vcpu_id)
        self.vcpus.append(v)
        return v

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.closed = True


class NullAccelerator:
    """Counts the VMs it made, so that the harness can check that every one was closed."""

    name = "null"

    def __init__(self) -> None:
        self.vms: list[NullVm] = []

    @staticmethod
    def available() -> tuple[bool, str]:
        return True, "always"

    def create_vm(self) -> NullVm:
        vm = NullVm()
        self.vms.append(vm)
        return vm

    def open_vms(self) -> int:
        return sum(1 for vm in self.vms if not vm.closed)


# ------------------------------------------------------------------------------ addresses
U64 = (1 << 64) - 1
PAGE_MASK = U64 & ~(PAGE - 1)
_IOREQ_BUF = slice(uapi.acrn_vm_creation.ioreq_buf.offset, uapi.acrn_vm_creation.ioreq_buf.offset + 8)
_VMA_BASE = slice(uapi.acrn_vm_memmap.vma_base.offset, uapi.acrn_vm_memmap.vma_base.offset + 8)
_MEM_LEN = slice(uapi.acrn_vm_memmap.len.offset, uapi.acrn_vm_memmap.len.offset + 8)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int


class AddressPool:
    """User addresses for vma_base, ioreq_buf, the monitor page and raw struct pointers, kept safe.

    The emulator writes through user addresses (copy_to_user, the pinned ioreq and monitor pages)
    exactly as the kernel would; in this process that is real memory.  Every address a driver
    makes goes through the ``safe_*`` methods (or :meth:`make_safe`), which keep such writes inside
    the scratch area unless the kernel would refuse the address anyway (unmapped, read-only,
    PROT_NONE, kernel or non-canonical), so those kinds are still exercised as they are.  A random
    value pointing into the interpreter's heap would otherwise corrupt it (and coverage guidance
    learns mapped addresses from the comparisons in ``is_mapped``).

    Inside the pool the pages keep the roles acrn-dm gives them: struct bytes never land in a live
    ioreq page, a new ioreq page starts zeroed (acrn-dm allocates it so) and is never a live
    monitor page, and the monitor page is never a live ioreq page.  Otherwise the slot states would
    be whatever the driver wrote, and check_invariants would blame the emulator.

    The scratch area is fenced by a PROT_NONE guard page on each side: ``is_mapped`` reads the
    guard as not readable, so a copy_to_user or pin that runs past either end is EFAULT (as in the
    kernel) instead of a write into whatever mapping happens to be next.  ``machine`` and ``files``
    (the driver's list, read live) say which pages are live ioreq and monitor pages.
    """

    SCRATCH_PAGES = 8

    def __init__(self, machine: Machine | None = None, files: list[HsmFile] | None = None) -> None:
        self._machine = machine
        self._files: list[HsmFile] = files if files is not None else []
        self._area = mmap.mmap(
            -1, (self.SCRATCH_PAGES + 2) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        )
        base = _buffer_address(self._area)
        for guard in (base, base + (self.SCRATCH_PAGES + 1) * PAGE):
            if _libc.mprotect(guard, PAGE, 0) != 0:  # PROT_NONE
                err = ctypes.get_errno()
                self._area.close()
                raise OSError(err, f"mprotect of the scratch guard page: {os.strerror(err)}")
        #: The scratch area [lo, hi): read-write, a guard page just below lo and at hi.
        self.lo = base + PAGE
        self.hi = self.lo + self.SCRATCH_PAGES * PAGE
        self._ro = mmap.mmap(-1, PAGE, prot=mmap.PROT_READ)
        self._none = mmap.mmap(-1, 2 * PAGE, prot=0)  # PROT_NONE
        self.ro_page = _address_of_mmap(self._ro)
        self.none_page = _address_of_mmap(self._none)
        #: Addresses that must never be dereferenced (the emulator has to fault on them).
        self.bad: list[int] = [
            0,
            8,
            self.none_page,
            self.none_page + PAGE - 4,  # a range that ends in unmapped memory
            self.ro_page,  # readable, not writable: pins and copy_to_user fault
            0x0000_8000_0000_0000,  # non-canonical
            0xFFFF_8000_0000_0000,  # kernel half
            0xFFFF_FFFF_FFFF_F000,
        ]

    def page(self, i: int) -> int:
        return self.lo + (i % self.SCRATCH_PAGES) * PAGE

    def pick(self, selector: int, offset: int = 0) -> int:
        """A deterministic choice: good scratch pages (possibly misaligned) or a bad address."""
        n = self.SCRATCH_PAGES + len(self.bad)
        k = selector % n
        if k < self.SCRATCH_PAGES:
            return self.page(k) + (offset % PAGE if offset % 3 == 0 else 0)
        return self.bad[k - self.SCRATCH_PAGES]

    def in_scratch(self, addr: int, size: int = 1) -> bool:
        return self.lo <= addr and addr + size <= self.hi

    def live_pages(self) -> tuple[set[int], set[int]]:
        """The live ioreq pages and monitor pages (the hypervisor's view and the driver's)."""
        ioreq: set[int] = set()
        monitor: set[int] = set()
        if self._machine is not None:
            for vm in self._machine.hv.vms():
                if vm.ioreq_buffer is not None:
                    ioreq.add(vm.ioreq_buffer & PAGE_MASK)
                if vm.intr_monitor_page is not None:
                    monitor.add(vm.intr_monitor_page & PAGE_MASK)
        for f in self._files:
            if f.vm.ioreq_buf is not None:
                ioreq.add(f.vm.ioreq_buf & PAGE_MASK)
            if f.vm.monitor_page is not None:
                monitor.add(f.vm.monitor_page & PAGE_MASK)
        return ioreq, monitor

    def _free_page(self, near: int, avoid: set[int]) -> int | None:
        """A scratch page outside ``avoid`` (the first at or after ``near``, cyclically), or None."""
        for i in range(self.SCRATCH_PAGES):
            page = self.page(near + i)
            if page not in avoid:
                return page
        return None

    def safe_ptr(self, addr: int) -> int:
        """A struct pointer the kernel may write back through (at most a page, copy_to_user).

        Unmapped, PROT_NONE and kernel addresses and the read-only page stay as they are (EFAULT);
        any other mapped address is moved into scratch.  In scratch, the pointer's page and the next
        one must be clear of live ioreq pages; past the last scratch page lies the guard, so a
        pointer near the end stays there and its write-back faults.
        """
        addr &= U64
        if not self.in_scratch(addr):
            ro = self.ro_page
            if ro <= addr <= ro + PAGE - 512 or not is_mapped(addr, 1):
                return addr
        ioreq, _ = self.live_pages()
        touched = ioreq | {p - PAGE for p in ioreq}  # pages whose write-back could reach an ioreq page
        page = addr & PAGE_MASK
        if self.in_scratch(addr) and page not in touched:
            return addr
        first = self._free_page((page - self.lo) // PAGE, touched)
        return self.none_page if first is None else first + addr % PAGE

    def safe_monitor(self, addr: int) -> int:
        """VM_INTR_MONITOR's page (pinned; the hypervisor writes it): never a live ioreq page."""
        addr &= U64
        page = addr & PAGE_MASK
        if not self.in_scratch(page, PAGE) and not is_mapped(page, PAGE, write=True):
            return addr  # the pin fails: EFAULT
        ioreq, _ = self.live_pages()
        if self.in_scratch(page, PAGE) and page not in ioreq:
            return addr
        first = self._free_page((page - self.lo) // PAGE, ioreq)
        return self.none_page if first is None else first + addr % PAGE

    def safe_ioreq_buf(self, addr: int, struct_at: int | None = None) -> int:
        """CREATE_VM's ioreq_buf: a scratch page that is no live monitor page and not where the
        struct itself lies; zeroed unless it already is a live ioreq page (then it is shared)."""
        addr &= U64
        page = addr & PAGE_MASK
        if not self.in_scratch(page, PAGE) and not is_mapped(page, PAGE, write=True):
            return addr  # the pin fails: EFAULT
        ioreq, monitor = self.live_pages()
        avoid = set(monitor)
        if struct_at is not None:
            avoid |= {struct_at & PAGE_MASK, (struct_at + PAGE - 1) & PAGE_MASK}
        if not self.in_scratch(page, PAGE) or page in avoid:
            first = self._free_page((page - self.lo) // PAGE, avoid)
            if first is None:
                return self.none_page
            page, addr = first, first + addr % PAGE
        if page not in ioreq:
            # acrn-dm's ioreq page is fresh (zeroed) memory: stale bytes would read as slot states.
            ctypes.memset(page, 0, PAGE)
        return addr

    def safe_range(self, vma: int, length: int) -> int:
        """SET_MEMSEG's vma_base: the pinned range [page of vma, + whole pages of length)."""
        base, size = vma & PAGE_MASK, (length >> 12) * PAGE
        if size == 0 or self.in_scratch(base, size) or not is_mapped(base, size, write=True):
            return vma  # in scratch, or the pin fails (a range past the end meets the guard)
        return self.page(base // PAGE) + vma % PAGE

    def sanitize(self, cmd: int, data: bytes, at: int | None = None) -> bytes:
        """The struct bytes with their pinned user addresses made safe (CREATE_VM, SET_MEMSEG);
        ``at`` is where they will lie in scratch memory, if they are passed by pointer."""
        if cmd == uapi.ACRN_IOCTL_CREATE_VM and len(data) >= _IOREQ_BUF.stop:
            buf = int.from_bytes(data[_IOREQ_BUF], "little")
            safe = self.safe_ioreq_buf(buf, at)
            if safe != buf:
                data = data[: _IOREQ_BUF.start] + safe.to_bytes(8, "little") + data[_IOREQ_BUF.stop :]
        if cmd == uapi.ACRN_IOCTL_SET_MEMSEG and len(data) >= _MEM_LEN.stop:
            vma = int.from_bytes(data[_VMA_BASE], "little")
            safe = self.safe_range(vma, int.from_bytes(data[_MEM_LEN], "little"))
            if safe != vma:
                data = data[: _VMA_BASE.start] + safe.to_bytes(8, "little") + data[_VMA_BASE.stop :]
        return data

    def place(self, cmd: int, data: bytes, addr: int) -> int:
        """Put struct bytes at a (made safe) raw pointer; return the pointer to pass.

        Near the end of scratch only the bytes before the guard are written: the kernel's read of
        the whole struct then faults (EFAULT), which is the case such a pointer exercises.
        """
        addr = self.safe_ptr(addr)
        if self.in_scratch(addr):
            data = self.sanitize(cmd, data[:PAGE], at=addr)
            ctypes.memmove(addr, data, min(len(data), self.hi - addr))
        return addr

    def make_safe(self, cmd: int, arg: object) -> object:
        """An ioctl argument whose user addresses the emulator may write through, made safe."""
        cmd &= 0xFFFFFFFF
        kind = uapi.IOCTL_ARG.get(cmd)
        if cmd == uapi.ACRN_IOCTL_VM_INTR_MONITOR:
            # The argument is the page itself (pinned, written by the hypervisor); a Python buffer
            # lives in the heap, so it is replaced by a pool page.
            if not isinstance(arg, int):
                return self.safe_monitor(self.page(len(arg)))  # type: ignore[arg-type]
            return self.safe_monitor(arg)
        if not (isinstance(kind, type) or kind == "u64ptr"):
            return arg  # _IO and by-value commands, and unknown ones: nothing is dereferenced
        if isinstance(arg, int):
            ptr = self.safe_ptr(arg)
            if self.in_scratch(ptr) and cmd in (uapi.ACRN_IOCTL_CREATE_VM, uapi.ACRN_IOCTL_SET_MEMSEG):
                # What the kernel will read there may be left from an earlier operation.
                self.place(cmd, ctypes.string_at(ptr, min(48, self.hi - ptr)), ptr)
            return ptr
        if isinstance(arg, bytearray):
            arg[:] = self.sanitize(cmd, bytes(arg))
            return arg
        if isinstance(arg, bytes):
            return self.sanitize(cmd, arg)
        if isinstance(arg, ctypes.Structure):
            ctypes.memmove(ctypes.addressof(arg), self.sanitize(cmd, bytes(arg)), ctypes.sizeof(arg))
        return arg

    def close(self) -> None:
        self._area.close()
        self._ro.close()
        self._none.close()


def _address_of_mmap(m: mmap.mmap) -> int:
    # ctypes' from_buffer needs a writable export, which read-only and PROT_NONE maps refuse.
    return _buffer_address(m)


class _Py_buffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _buffer_address(obj: object) -> int:
    """The address behind any buffer (read-only ones included), via PyObject_GetBuffer."""
    b = _Py_buffer()
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_Py_buffer), ctypes.c_int]
    rel = ctypes.pythonapi.PyBuffer_Release
    rel.argtypes = [ctypes.POINTER(_Py_buffer)]
    if get(obj, ctypes.byref(b), 0) != 0:
        raise OSError("PyObject_GetBuffer failed")
    try:
        return int(b.buf or 0)
    finally:
        rel(ctypes.byref(b))


# ------------------------------------------------------------------------------ invariants
def check_invariants(machine: Machine, files: list[HsmFile], accel: NullAccelerator | None = None) -> None:
    """Hold after every step: legal states, legal slot states, resources accounted (HC_STATE_RULES, the
    ioreq slot states)."""
    hv = machine.hv
    live = {vm.vmid: vm for vm in hv.vms()}
    for vm in live.values():
        assert vm.state in VmState and vm.state != VmState.POWERED_OFF, f"VM {vm.vmid} state {vm.state}"
        for v in vm.vcpus:
            assert v.state in VcpuState, f"VM {vm.vmid} vCPU {v.vcpu_id} state {v.state}"
            # A RUNNING vCPU only exists in a RUNNING (or RT-powering-off) VM; PAUSE makes ZOMBIEs.
            if v.state == VcpuState.RUNNING:
                assert vm.state in (VmState.RUNNING, VmState.READY_TO_POWEROFF), (vm.vmid, vm.state)
        if vm.ioreq_buffer is not None:
            for i in range(uapi.ACRN_IO_REQUEST_MAX):
                slot = hv.ioreq_slot(vm.vmid, i)
                assert slot is not None
                assert slot.processed in (0, 1, 2, 3), f"VM {vm.vmid} slot {i} processed={slot.processed}"
    open_vmids = set()
    for f in files:
        if f.closed:
            continue
        if f.vm.valid:
            assert f.vm.vmid in live, f"fd holds vmid {f.vm.vmid} that the hypervisor does not know"
            open_vmids.add(f.vm.vmid)
            assert f.vm.ioreq_buf is not None, "a valid VM always has its ioreq page pinned"
        elif not f.vm.orphans:
            # Only a fd that lost its VMs (docs/differences.md) keeps pages pinned without a vmid.
            assert f.vm.ioreq_buf is None and f.vm.monitor_page is None and not f.vm.ram_mappings
    # Every runtime VM belongs to a live hypervisor VM; every live VM is owned by an fd (or orphaned
    # by it, docs/differences.md, and then released with it).
    assert set(machine.runtime.vms) <= set(live), (sorted(machine.runtime.vms), sorted(live))
    owned = open_vmids | {o for f in files if not f.closed for o in f.vm.orphans}
    assert set(live) <= owned, f"VMs {sorted(set(live) - owned)} have no fd"
    # Pins: exactly the pages the open fds hold (ioreq page, monitor page, RAM ranges).
    expected = sum(
        (f.vm.ioreq_buf is not None) + (f.vm.monitor_page is not None) + len(f.vm.ram_mappings)
        for f in files
        if not f.closed
    )
    assert machine.hsm.pins.count() == expected, (machine.hsm.pins.count(), expected)
    if accel is not None:
        assert accel.open_vms() == len(machine.runtime.vms)


def check_released(machine: Machine, accel: NullAccelerator | None = None) -> None:
    """After every fd is closed: nothing is left in the hypervisor, the driver or the runtime."""
    assert machine.hv.vms() == [], machine.hv.vms()
    assert machine.hsm.vms == []
    assert machine.hsm.open_files == set()
    assert machine.hsm.pins.count() == 0
    assert machine.memory._starts == [], "Service VM memory registrations left behind"
    assert machine.runtime.vms == {}
    if accel is not None:
        assert accel.open_vms() == 0


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))
