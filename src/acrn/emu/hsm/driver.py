"""The emulated HSM character device: ``acrn_dev_ioctl`` and friends.

Linux sources: ``drivers/virt/acrn/hsm.c`` (``acrn_dev_open``, ``acrn_dev_ioctl``,
``acrn_dev_release``, ``pmcmd_ioctl``) and ``drivers/virt/acrn/vm.c`` (``acrn_vm_create``,
``acrn_vm_destroy``); the per-ioctl rules are tabled in ``docs/ioctls.md``.

:class:`HsmDriver` is the module-wide state (the global VM list and the ioreq dispatcher, which
the hypervisor's upcall runs); :class:`HsmFile` is one open file (one fd = one VM).

``HsmFile.ioctl(cmd, arg)`` takes exactly what the kernel receives: the full 32-bit command and
the ``unsigned long`` argument, given either as a Python buffer (the caller's memory) or as an
integer (a user pointer for struct ioctls, a value for SET_IRQLINE and VM_INTR_MONITOR).  It
returns the non-negative result or raises ``OSError(errno)``.

Where the emulator knowingly differs from the Linux driver (all to avoid leaks or crashes; the
return codes are the same):

* release of an fd whose VM could not be destroyed (not paused) or that lost track of
  its VMs (a second CREATE_VM, see ``docs/differences.md``): ACRN leaks the hypervisor VM and frees the
  kernel object while it is still listed; the emulator returns the same codes, then pauses and destroys
  those VMs in the hypervisor and frees all kernel-side state.
* in-kernel ioreq clients run in the dispatcher pass, not on a kthread (``acrn.emu.hsm.ioreq``).
* irqfd: closing the eventfd does not shut the irqfd down (``acrn.emu.hsm.eventfds``).
* SET_MEMSEG: no VM_PFNMAP path (``acrn.emu.hsm.memseg``).
* a buffer argument shorter than what the kernel writes back gives EFAULT (e.g. PM_GET_CPU_STATE
  GET_PX_DATA with an 8-byte buffer); the kernel would write past it.
* pinning does not keep user memory alive: unmapping a page the VM still uses (ioreq page,
  guest RAM) while the VM exists is undefined, as it is not in Linux.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from acrn import uapi
from acrn.emu.hsm import ioreq, memseg
from acrn.emu.hsm.eventfds import IoeventfdSet, IrqfdSet
from acrn.emu.hsm.ioreq import IoreqClient
from acrn.emu.hsm.uaccess import PAGE_MASK, Fault, PinTable, UserArg
from acrn.emu.hsm.vm import HsmVm
from acrn.emu.service_vm_memory import PAGE_SIZE, ServiceVmMemory

if TYPE_CHECKING:
    from acrn.emu.hv import Hypervisor

log = logging.getLogger("acrn.emu.hsm")

_S = ctypes.sizeof


class HsmDriver:
    """The loaded HSM module: global VM list, ioreq dispatcher, pinned-page registry."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self.memory: ServiceVmMemory = hv.memory
        self.pins = PinTable(self.memory)
        self.vm_list_lock = threading.RLock()
        #: ``acrn_vm_list``: newest first (list_add), as the dispatcher walks it.
        self.vms: list[HsmVm] = []
        # The ordered "ioreq_wq" work queue: one dispatcher pass at a time.
        self._dispatch_lock = threading.RLock()
        self.open_files: set[HsmFile] = set()
        hv.set_upcall(self.dispatch)

    def open(self) -> HsmFile:
        """``open("/dev/acrn_hsm")``: a fresh fd with no VM."""
        f = HsmFile(self)
        with self.vm_list_lock:
            self.open_files.add(f)
        return f

    def dispatch(self) -> None:
        """``ioreq_dispatcher`` (``drivers/virt/acrn/ioreq.c``): the upcall handler; stops at the first VM
        without buffer."""
        with self._dispatch_lock, self.vm_list_lock:
            for vm in list(self.vms):
                if vm.ioreq_buf is None:
                    break
                ioreq.dispatch_vm(vm)

    def paused(self) -> _DispatchPause:
        """``ioreq_pause``/``ioreq_resume``: no dispatch inside; one dispatch pass on exit (``ioreq.c``)."""
        return _DispatchPause(self)


class _DispatchPause:
    def __init__(self, driver: HsmDriver) -> None:
        self.driver = driver

    def __enter__(self) -> None:
        self.driver._dispatch_lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.driver._dispatch_lock.release()
        self.driver.dispatch()


_Handler = Callable[["HsmFile", UserArg], int]


class HsmFile:
    """One open ``/dev/acrn_hsm`` file: its :class:`HsmVm` and the ioctl entry point."""

    def __init__(self, driver: HsmDriver) -> None:
        self.driver = driver
        self.vm = HsmVm(driver)
        self.closed = False

    # ---------------------------------------------------------------- entry points
    def ioctl(self, cmd: int, arg: object = 0) -> int:
        """``acrn_dev_ioctl``: the non-negative result, or ``OSError(errno)``."""
        if self.closed:
            raise OSError(errno.EBADF, "file is closed")
        cmd &= 0xFFFFFFFF
        uarg = UserArg(arg)
        try:
            ret = self._ioctl(cmd, uarg)
        finally:
            uarg.release()
        return _result(cmd, ret)

    def _ioctl(self, cmd: int, uarg: UserArg) -> int:
        vm = self.vm
        # acrn_dev_ioctl's preamble: before CREATE_VM (and after DESTROY) every other command is -EINVAL,
        # unknown ones included.
        if not vm.valid and cmd != uapi.ACRN_IOCTL_CREATE_VM:
            return -errno.EINVAL
        handler = _HANDLERS.get(cmd)
        if handler is None:
            return -errno.ENOTTY
        try:
            return handler(self, uarg)
        except Fault as e:
            log.debug("ioctl %#x: fault: %s", cmd, e)
            return -errno.EFAULT

    def notify_request_finish(self, vcpu: int) -> int:
        """NOTIFY_REQUEST_FINISH for an in-process device model: the ioctl without its argument.

        The same path as ``ioctl(ACRN_IOCTL_NOTIFY_REQUEST_FINISH, {vmid, 0, vcpu})`` after the
        copy and decode of the 8-byte struct (whose ``reserved`` is 0 by construction): the closed
        fd, ``acrn_dev_ioctl``'s preamble, then :func:`request_finish`.  Errors raise OSError.
        """
        if self.closed:
            raise OSError(errno.EBADF, "file is closed")
        vm = self.vm
        return _result(_NOTIFY, request_finish(vm, vcpu) if vm.valid else -errno.EINVAL)

    def attach_ioreq_client(self) -> int:
        """ATTACH_IOREQ_CLIENT for an in-process device model: the ioctl without the generic entry.

        The same path as ``ioctl(ACRN_IOCTL_ATTACH_IOREQ_CLIENT)`` (its argument is ignored by the
        driver): the closed fd, ``acrn_dev_ioctl``'s preamble, then :func:`attach`.  Errors raise
        OSError.
        """
        if self.closed:
            raise OSError(errno.EBADF, "file is closed")
        vm = self.vm
        return _result(_ATTACH, attach(vm) if vm.valid else -errno.EINVAL)

    def interrupt_attach(self) -> None:
        """Emulate a signal to threads blocked in ATTACH_IOREQ_CLIENT: they return 0
        (``acrn_ioreq_client_wait``)."""
        client = self.vm.default_client
        if client is not None:
            client.interrupt()

    def release(self) -> None:
        """``acrn_dev_release``: the destroy path (``acrn_vm_destroy``), its result ignored.

        Unlike Linux, a VM the destroy could not remove is paused and destroyed in the hypervisor
        and all kernel state is freed, so nothing leaks (see the module docstring).
        """
        if self.closed:
            return
        self.closed = True
        vm = self.vm
        vm_destroy(vm)
        if vm.valid and vm.vmid not in vm.orphans:
            vm.orphans.append(vm.vmid)
        for vmid in vm.orphans:
            vm.hypercall(uapi.HC_PAUSE_VM, vmid)
            if vm.hypercall(uapi.HC_DESTROY_VM, vmid) < 0 and self.driver.hv.force_shutdown(vmid):
                # A running RTVM ignores PAUSE (hcall_pause_vm's severity check); ACRN would leak it here.
                log.warning("VM %d was not pausable; the emulator shut it down at release", vmid)
        vm.orphans.clear()
        _teardown(vm)
        vm.vmid = uapi.ACRN_INVALID_VMID
        with self.driver.vm_list_lock:
            self.driver.open_files.discard(self)

    close = release

    def __enter__(self) -> HsmFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_NOTIFY: Final = uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH
_ATTACH: Final = uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT


def _result(cmd: int, ret: int) -> int:
    """The syscall's result: ``ret``, or -1 with errno = -ret (a bare -1 from the hypervisor is
    EPERM) raised as OSError naming the ioctl."""
    if ret < 0:
        raise OSError(-ret, f"{uapi.IOCTL_NAMES.get(cmd, hex(cmd))}: {_strerror(-ret)}")
    return ret


def _strerror(err: int) -> str:
    import os

    try:
        return os.strerror(err)
    except ValueError:
        return f"error {err}"


# -------------------------------------------------------------------------------- VM lifecycle
def vm_create(f: HsmFile, param: uapi.acrn_vm_creation) -> int:
    """``acrn_vm_create`` (``drivers/virt/acrn/vm.c``); writes vmid/vcpu_num into ``param``."""
    vm, driver = f.vm, f.driver
    with driver.memory.kernel_copy(bytes(param)) as kcopy:
        ret = vm.hypercall(uapi.HC_CREATE_VM, kcopy.gpa, 0)
        ctypes.memmove(ctypes.addressof(param), kcopy.gpa, _S(param))
    if ret < 0 or param.vmid == uapi.ACRN_INVALID_VMID:
        # Every hypervisor failure becomes -EINVAL (acrn_dev_ioctl, CREATE_VM case).
        return -errno.EINVAL
    if vm.valid and vm.vmid != param.vmid and vm.vmid not in vm.orphans:
        vm.orphans.append(vm.vmid)  # emulator bookkeeping: see docs/differences.md
    with vm.clients_lock:
        # The kernel re-initialises the client list head here (INIT_LIST_HEAD), forgetting clients.
        vm.ioreq_clients = []
    vm.vmid = param.vmid
    vm.vcpu_num = param.vcpu_num
    if ioreq_init(vm, param.ioreq_buf) < 0:
        vm.hypercall(uapi.HC_DESTROY_VM, param.vmid)
        if param.vmid not in vm.orphans:
            vm.orphans.append(param.vmid)
        vm.vmid = uapi.ACRN_INVALID_VMID
        return -errno.EINVAL
    with driver.vm_list_lock:
        if vm not in driver.vms:
            driver.vms.insert(0, vm)
    vm.ioeventfds = IoeventfdSet(vm)
    with vm.clients_lock:
        vm.ioreq_clients.insert(0, vm.ioeventfds.client)
    return 0


def ioreq_init(vm: HsmVm, buf_vma: int) -> int:
    """``acrn_ioreq_init``: pin the page holding ``buf_vma``, register its base (offset dropped)."""
    if vm.ioreq_buf is not None:
        return -errno.EEXIST
    page = buf_vma & PAGE_MASK  # acrn_ioreq_init: only the containing page is pinned
    try:
        vm.driver.pins.pin(page, PAGE_SIZE)
    except Fault:
        log.error("failed to pin ioreq page %#x", buf_vma)
        return -errno.EFAULT
    vm.ioreq_buf = page
    with vm.driver.memory.kernel_copy(page.to_bytes(8, "little")) as kcopy:
        ret = vm.hypercall(uapi.HC_SET_IOREQ_BUFFER, vm.vmid, kcopy.gpa)
    if ret < 0:
        vm.driver.pins.unpin(page, PAGE_SIZE)
        vm.ioreq_buf = None
    return ret


def ioreq_deinit(vm: HsmVm) -> None:
    """``acrn_ioreq_deinit``: non-default clients, then the default one, then unpin the page."""
    for client in list(vm.ioreq_clients):
        client_destroy(vm, client)
    if vm.default_client is not None:
        client_destroy(vm, vm.default_client)
    if vm.ioreq_buf is not None:
        vm.driver.pins.unpin(vm.ioreq_buf, PAGE_SIZE)
        vm.ioreq_buf = None


def client_destroy(vm: HsmVm, client: IoreqClient) -> None:
    """``acrn_ioreq_client_destroy``: wakes ATTACH with -ENODEV; one dispatch pass afterwards."""
    with vm.driver.paused(), vm.clients_lock:
        client.destroying = True
        client.wake()
        if client.is_default:
            if vm.default_client is client:
                vm.default_client = None
        elif client in vm.ioreq_clients:
            vm.ioreq_clients.remove(client)
        client.ranges.clear()


def vm_destroy(vm: HsmVm) -> int:
    """``acrn_vm_destroy`` (``drivers/virt/acrn/vm.c``)."""
    if not vm.valid or vm.destroyed:
        return 0
    vm.destroyed = True
    ret = vm.hypercall(uapi.HC_DESTROY_VM, vm.vmid)
    if ret < 0:
        log.debug("failed to destroy VM %d: %d", vm.vmid, ret)
        vm.destroyed = False
        return ret
    with vm.driver.vm_list_lock:
        if vm in vm.driver.vms:
            vm.driver.vms.remove(vm)
    _teardown(vm)
    vm.vmid = uapi.ACRN_INVALID_VMID
    return 0


def _teardown(vm: HsmVm) -> None:
    """``acrn_vm_destroy`` after the hypervisor agreed: ioeventfd, irqfd, ioreq, monitor page, RAM."""
    with vm.driver.vm_list_lock:
        if vm in vm.driver.vms:
            vm.driver.vms.remove(vm)
    if vm.ioeventfds is not None:
        client = vm.ioeventfds.client
        if client in vm.ioreq_clients:
            client_destroy(vm, client)
        vm.ioeventfds.close()
        vm.ioeventfds = None
    if vm.irqfds is not None:
        vm.irqfds.close()
        vm.irqfds = None
    ioreq_deinit(vm)
    if vm.monitor_page is not None:
        vm.driver.pins.unpin(vm.monitor_page, PAGE_SIZE)
        vm.monitor_page = None
    memseg.all_ram_unmap(vm)


# -------------------------------------------------------------------------------- ioctl handlers
def _struct(uarg: UserArg, ctype: type[ctypes.Structure]) -> ctypes.Structure:
    """``memdup_user``/``copy_from_user`` of one struct (Fault -> -EFAULT)."""
    return ctype.from_buffer_copy(uarg.copy_from_user(_S(ctype)))


def _kcall(f: HsmFile, hcid: int, obj: ctypes.Structure) -> int:
    """A memdup'd struct passed to the hypervisor by Service VM physical address, with the fd's vmid."""
    with f.driver.memory.kernel_copy(bytes(obj)) as kcopy:
        return f.vm.hypercall(hcid, f.vm.vmid, kcopy.gpa)


def _create_vm(f: HsmFile, uarg: UserArg) -> int:
    param = _struct(uarg, uapi.acrn_vm_creation)
    assert isinstance(param, uapi.acrn_vm_creation)
    if param.reserved0 | param.reserved1:
        return -errno.EINVAL
    ret = vm_create(f, param)
    if ret < 0:
        return ret
    try:
        uarg.copy_to_user(bytes(param))
    except Fault:
        # The VM is CREATED, so this destroy is refused and the VM stays with the fd (acrn_vm_create's
        # error path).
        vm_destroy(f.vm)
        return -errno.EFAULT
    return 0


def _destroy_vm(f: HsmFile, uarg: UserArg) -> int:
    return vm_destroy(f.vm)


def _direct(hcid: int) -> _Handler:
    def handler(f: HsmFile, uarg: UserArg) -> int:
        return f.vm.hypercall(hcid, f.vm.vmid, 0)

    return handler


def _set_vcpu_regs(f: HsmFile, uarg: UserArg) -> int:
    regs = _struct(uarg, uapi.acrn_vcpu_regs)
    assert isinstance(regs, uapi.acrn_vcpu_regs)
    # Kernel check order (acrn_dev_ioctl, SET_VCPU_REGS case); the 4 tail-padding bytes are not checked.
    if any(regs.reserved):
        return -errno.EINVAL
    if any(regs.vcpu_regs.reserved_32):
        return -errno.EINVAL
    if any(regs.vcpu_regs.reserved_64):
        return -errno.EINVAL
    for i in range(3):
        if regs.vcpu_regs.gdt.reserved[i] | regs.vcpu_regs.idt.reserved[i]:
            return -errno.EINVAL
    return _kcall(f, uapi.HC_SET_VCPU_REGS, regs)


def _memdup_call(ctype: type[ctypes.Structure], hcid: int) -> _Handler:
    def handler(f: HsmFile, uarg: UserArg) -> int:
        return _kcall(f, hcid, _struct(uarg, ctype))

    return handler


def _vm_intr_monitor(f: HsmFile, uarg: UserArg) -> int:
    """The argument is a user address used as a value; the page is pinned, its offset dropped."""
    vm = f.vm
    page = uarg.value & PAGE_MASK
    try:
        f.driver.pins.pin(page, PAGE_SIZE, uarg.obj if uarg.is_buffer else None)
    except Fault:
        return -errno.EFAULT
    ret = vm.hypercall(uapi.HC_VM_INTR_MONITOR, vm.vmid, page)
    if ret < 0:
        f.driver.pins.unpin(page, PAGE_SIZE)
        return ret
    if vm.monitor_page is not None:
        f.driver.pins.unpin(vm.monitor_page, PAGE_SIZE)
    vm.monitor_page = page
    return ret


def _set_irqline(f: HsmFile, uarg: UserArg) -> int:
    # By value: bits 31:0 GSI, 63:32 op (hcall_set_irqline's struct acrn_irqline_ops).
    return f.vm.hypercall(uapi.HC_SET_IRQLINE, f.vm.vmid, uarg.value)


def _notify_request_finish(f: HsmFile, uarg: UserArg) -> int:
    notify = _struct(uarg, uapi.acrn_ioreq_notify)
    assert isinstance(notify, uapi.acrn_ioreq_notify)
    if notify.reserved:
        return -errno.EINVAL
    return request_finish(f.vm, notify.vcpu)


def request_finish(vm: HsmVm, vcpu: int) -> int:
    """NOTIFY_REQUEST_FINISH once its argument passed: ``acrn_ioreq_request_default_complete``.

    No default client is 0; ``vmid`` is ignored and ``vcpu`` truncated to u16 (the function takes
    a u16), then ``ioreq_complete_request``.
    """
    client = vm.default_client
    if client is None:
        return 0
    return ioreq.client_complete(client, vcpu & 0xFFFF)


def _create_ioreq_client(f: HsmFile, uarg: UserArg) -> int:
    vm = f.vm
    with vm.clients_lock:
        if vm.default_client is not None:
            return -errno.EEXIST
        vm.default_client = IoreqClient(vm, "acrndm", True, None)
    return 0


def _attach_ioreq_client(f: HsmFile, uarg: UserArg) -> int:
    return attach(f.vm)


def attach(vm: HsmVm) -> int:
    """ATTACH_IOREQ_CLIENT: -ENODEV without a default client, else ``acrn_ioreq_client_wait``."""
    client = vm.default_client
    if client is None:
        return -errno.ENODEV
    return client.wait()


def _destroy_ioreq_client(f: HsmFile, uarg: UserArg) -> int:
    client = f.vm.default_client
    if client is not None:
        client_destroy(f.vm, client)
    return 0


def _clear_vm_ioreq(f: HsmFile, uarg: UserArg) -> int:
    """``acrn_ioreq_request_clear`` (``drivers/virt/acrn/ioreq.c``)."""
    vm = f.vm
    vm.clearing = True
    # Waiting for in-kernel clients to drain: they run inside dispatcher passes, so waiting for
    # any running pass to end is enough.
    with f.driver._dispatch_lock:
        pass
    client = vm.default_client
    if client is not None:
        with vm.clients_lock:
            pending = sorted(client.pending)
        for vcpu in pending:
            ioreq.client_complete(client, vcpu)
    vm.clearing = False
    return 0


def _set_memseg(f: HsmFile, uarg: UserArg) -> int:
    memmap = _struct(uarg, uapi.acrn_vm_memmap)
    assert isinstance(memmap, uapi.acrn_vm_memmap)
    return memseg.memseg_map(f.vm, memmap)


def _unset_memseg(f: HsmFile, uarg: UserArg) -> int:
    memmap = _struct(uarg, uapi.acrn_vm_memmap)
    assert isinstance(memmap, uapi.acrn_vm_memmap)
    return memseg.memseg_unmap(f.vm, memmap)


#: PM_GET_CPU_STATE: bytes the kernel allocates and copies back, by type (``pmcmd_ioctl``).
_PM_SIZES = {
    uapi.ACRN_PMCMD_GET_PX_CNT: 8,
    uapi.ACRN_PMCMD_GET_CX_CNT: 8,
    uapi.ACRN_PMCMD_GET_PX_DATA: _S(uapi.acrn_pstate_data),
    uapi.ACRN_PMCMD_GET_CX_DATA: _S(uapi.acrn_cstate_data),
}


def _pm_get_cpu_state(f: HsmFile, uarg: UserArg) -> int:
    cmd = int.from_bytes(uarg.copy_from_user(8), "little")
    size = _PM_SIZES.get(cmd & uapi.PMCMD_TYPE_MASK)
    if size is None:
        return 0  # unknown type: nothing happens
    with f.driver.memory.kernel_copy(bytes(size)) as kcopy:
        # The vmid travels in the command word; the fd's vmid is not used (pmcmd_ioctl).
        ret = f.vm.hypercall(uapi.HC_PM_GET_CPU_STATE, cmd, kcopy.gpa)
        if ret < 0:
            return ret
        data = ctypes.string_at(kcopy.gpa, size)
    uarg.copy_to_user(data)
    return ret


def _ioeventfd(f: HsmFile, uarg: UserArg) -> int:
    args = _struct(uarg, uapi.acrn_ioeventfd)
    assert isinstance(args, uapi.acrn_ioeventfd)
    if args.reserved:
        return -errno.EINVAL  # before the flags are looked at, so DEASSIGN too (acrn_dev_ioctl)
    if f.vm.ioeventfds is None:
        return -errno.EINVAL
    return f.vm.ioeventfds.config(args)


def _irqfd(f: HsmFile, uarg: UserArg) -> int:
    args = _struct(uarg, uapi.acrn_irqfd)
    assert isinstance(args, uapi.acrn_irqfd)
    vm = f.vm
    if vm.irqfds is None:
        if args.flags & uapi.ACRN_IRQFD_FLAG_DEASSIGN:
            return irqfd_deassign_without_set(args)
        vm.irqfds = IrqfdSet(vm)  # the irqfd "work queue" thread starts with the first irqfd
    return vm.irqfds.config(args)


def irqfd_deassign_without_set(args: uapi.acrn_irqfd) -> int:
    """DEASSIGN with no irqfd at all: only the eventfd lookup can fail."""
    from acrn.emu.hsm.eventfds import EventfdCtx

    try:
        EventfdCtx(args.fd).close()
    except OSError as e:
        return -(e.errno or errno.EINVAL)
    return 0


_HANDLERS: dict[int, _Handler] = {
    uapi.ACRN_IOCTL_CREATE_VM: _create_vm,
    uapi.ACRN_IOCTL_DESTROY_VM: _destroy_vm,
    uapi.ACRN_IOCTL_START_VM: _direct(uapi.HC_START_VM),
    uapi.ACRN_IOCTL_PAUSE_VM: _direct(uapi.HC_PAUSE_VM),
    uapi.ACRN_IOCTL_RESET_VM: _direct(uapi.HC_RESET_VM),
    uapi.ACRN_IOCTL_SET_VCPU_REGS: _set_vcpu_regs,
    uapi.ACRN_IOCTL_INJECT_MSI: _memdup_call(uapi.acrn_msi_entry, uapi.HC_INJECT_MSI),
    uapi.ACRN_IOCTL_VM_INTR_MONITOR: _vm_intr_monitor,
    uapi.ACRN_IOCTL_SET_IRQLINE: _set_irqline,
    uapi.ACRN_IOCTL_NOTIFY_REQUEST_FINISH: _notify_request_finish,
    uapi.ACRN_IOCTL_CREATE_IOREQ_CLIENT: _create_ioreq_client,
    uapi.ACRN_IOCTL_ATTACH_IOREQ_CLIENT: _attach_ioreq_client,
    uapi.ACRN_IOCTL_DESTROY_IOREQ_CLIENT: _destroy_ioreq_client,
    uapi.ACRN_IOCTL_CLEAR_VM_IOREQ: _clear_vm_ioreq,
    uapi.ACRN_IOCTL_SET_MEMSEG: _set_memseg,
    uapi.ACRN_IOCTL_UNSET_MEMSEG: _unset_memseg,
    uapi.ACRN_IOCTL_SET_PTDEV_INTR: _memdup_call(uapi.acrn_ptdev_irq, uapi.HC_SET_PTDEV_INTR),
    uapi.ACRN_IOCTL_RESET_PTDEV_INTR: _memdup_call(uapi.acrn_ptdev_irq, uapi.HC_RESET_PTDEV_INTR),
    uapi.ACRN_IOCTL_ASSIGN_PCIDEV: _memdup_call(uapi.acrn_pcidev, uapi.HC_ASSIGN_PCIDEV),
    uapi.ACRN_IOCTL_DEASSIGN_PCIDEV: _memdup_call(uapi.acrn_pcidev, uapi.HC_DEASSIGN_PCIDEV),
    uapi.ACRN_IOCTL_ASSIGN_MMIODEV: _memdup_call(uapi.acrn_mmiodev, uapi.HC_ASSIGN_MMIODEV),
    uapi.ACRN_IOCTL_DEASSIGN_MMIODEV: _memdup_call(uapi.acrn_mmiodev, uapi.HC_DEASSIGN_MMIODEV),
    uapi.ACRN_IOCTL_CREATE_VDEV: _memdup_call(uapi.acrn_vdev, uapi.HC_CREATE_VDEV),
    uapi.ACRN_IOCTL_DESTROY_VDEV: _memdup_call(uapi.acrn_vdev, uapi.HC_DESTROY_VDEV),
    uapi.ACRN_IOCTL_PM_GET_CPU_STATE: _pm_get_cpu_state,
    uapi.ACRN_IOCTL_IOEVENTFD: _ioeventfd,
    uapi.ACRN_IOCTL_IRQFD: _irqfd,
}
