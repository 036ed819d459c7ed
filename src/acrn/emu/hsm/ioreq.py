"""The kernel side of the ioreq protocol (``drivers/virt/acrn/ioreq.c``): clients, the dispatcher, the CF8/CFC
combiner, clearing.

The shared page is the caller's own memory (pinned at CREATE_VM); slots are read and written in
place through ctypes, as the kernel reads them through ``page_address()``.  Slot ownership follows
``Documentation/virt/acrn/io-request.rst``: the hypervisor writes PENDING, the dispatcher turns it into
PROCESSING (or completes it in the kernel), a completion stores COMPLETE and, unless
``completion_polling`` was set, issues HC_NOTIFY_REQUEST_FINISH.

Emulator difference: in-kernel clients (the ioeventfd client) run their handler synchronously in the
dispatcher pass instead of on a kthread; the slot states they go through are the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from acrn import uapi
from acrn.emu.hsm.uaccess import U64

if TYPE_CHECKING:
    from acrn.emu.hsm.vm import HsmVm

log = logging.getLogger("acrn.emu.hsm")

#: An in-kernel client's handler: returns < 0 on failure (the request then stays PROCESSING).
IoreqHandler = Callable[["IoreqClient", uapi.acrn_io_request], int]

# drivers/virt/acrn/ioreq.c: PCI_LOWREG_MASK, PCI_HIGHREG_MASK, PCI_FUNCMAX, PCI_SLOTMAX, PCI_BUSMAX.
_PCI_LOWREG_MASK = 0xFC
_PCI_HIGHREG_MASK = 0xF00
_CONF1_ENABLE = 0x80000000
_CF8 = 0xCF8
_CFC = 0xCFC


@dataclass
class IoreqRange:
    """An inclusive range [start, end] of one request type, owned by a non-default client."""

    type: int
    start: int
    end: int


class IoreqClient:
    """``struct acrn_ioreq_client``: the default (userspace) client or an in-kernel one."""

    def __init__(self, vm: HsmVm, name: str, is_default: bool, handler: IoreqHandler | None) -> None:
        self.vm = vm
        self.name = name
        self.is_default = is_default
        self.handler = handler
        #: The ``ioreqs_map`` bitmap: vCPU ids with a request handed to this client.
        self.pending: set[int] = set()
        self.ranges: list[IoreqRange] = []
        self.destroying = False
        #: Bumped by interrupt_attach(): waiters that saw an older value return 0 (a signal).
        self.interrupts = 0
        #: Entering it takes ``clients_lock`` (kept for callers that lock through the client).
        self.cond = threading.Condition(vm.clients_lock)
        #: Threads blocked in :meth:`wait`: the dispatcher skips the wake-up when there are none
        #: (the fast path has no ATTACH thread, and a wake-up costs more than the rest of a dispatch).
        self.waiters = 0
        # The ATTACH wake-up: a bare lock used as a binary semaphore, released by the waker and
        # taken by the waiter, so a wake-up is one futex operation; a Condition would add a
        # waiter lock and make the woken thread contend for clients_lock, which its waker holds.
        self._signal = threading.Lock()
        self._signal.acquire()

    def range_add(self, type_: int, start: int, end: int) -> int:
        """``acrn_ioreq_range_add``: end < start -> -EINVAL."""
        if end < start:
            return -22
        with self.vm.clients_lock:
            self.ranges.insert(0, IoreqRange(type_, start, end))
        return 0

    def range_del(self, type_: int, start: int, end: int) -> None:
        """``acrn_ioreq_range_del``: removes the first range equal in type, start and end."""
        with self.vm.clients_lock:
            for i, r in enumerate(self.ranges):
                if (r.type, r.start, r.end) == (type_, start, end):
                    del self.ranges[i]
                    break

    def wait(self) -> int:
        """``acrn_ioreq_client_wait`` for the default client (ATTACH_IOREQ_CLIENT).

        Blocks until a request is pending or the client is being destroyed; a signal (emulated by
        :meth:`interrupt`) ends the wait with 0 too, because the kernel ignores the wait's result
        (``acrn_ioreq_client_wait``).  Every waiter sees every wake-up (the kernel's wake_up_interruptible): a
        woken waiter passes the wake-up on while others still wait.
        """
        lock = self.vm.clients_lock
        signal = self._signal
        lock.acquire()
        try:
            seen = self.interrupts
            self.waiters += 1
            try:
                while not (self.pending or self.destroying or self.interrupts != seen):
                    lock.release()
                    try:
                        signal.acquire()
                    finally:
                        lock.acquire()
                if self.waiters > 1:
                    self._post()
            finally:
                self.waiters -= 1
            destroying = self.destroying
        finally:
            lock.release()
        return -19 if destroying else 0  # -ENODEV once destroyed

    def _post(self) -> None:
        """Release the wake-up semaphore (caller holds ``clients_lock``); at most one pending."""
        try:  # noqa: SIM105 (contextlib.suppress costs more, on every I/O exit)
            self._signal.release()
        except RuntimeError:  # already released, not yet taken
            pass

    def wake(self) -> None:
        """Wake ATTACH waiters (caller holds ``clients_lock``); nothing to do when none waits."""
        if self.waiters:
            self._post()

    def interrupt(self) -> None:
        with self.vm.clients_lock:
            self.interrupts += 1
            self.wake()


def slot(vm: HsmVm, vcpu: int) -> uapi.acrn_io_request:
    """The vCPU's slot of the pinned ioreq page, in place (views are made once per page)."""
    buf = vm.ioreq_buf
    assert buf is not None
    if vm.slot_views_base != buf:
        vm.slot_views = [
            uapi.acrn_io_request.from_address(buf + i * 256) for i in range(uapi.ACRN_IO_REQUEST_MAX)
        ]
        # The PIO member of each slot's union, made once too (a nested ctypes view per access
        # costs more than the rest of the CF8/CFC test).
        vm.pio_views = [req.reqs.pio_request for req in vm.slot_views]
        vm.slot_views_base = buf
    return vm.slot_views[vcpu]


def complete_request(vm: HsmVm, vcpu: int, req: uapi.acrn_io_request) -> int:
    """``ioreq_complete_request``: COMPLETE, then notify the hypervisor unless it polls."""
    polling = req.completion_polling  # read before the store, as the kernel does
    req.processed = uapi.ACRN_IOREQ_STATE_COMPLETE
    if polling:
        return 0
    ret = vm.hypercall(uapi.HC_NOTIFY_REQUEST_FINISH, vm.vmid, vcpu)
    if ret < 0:
        log.debug("notify request finish of VM %d vCPU %d failed: %d", vm.vmid, vcpu, ret)
    return ret


def client_complete(client: IoreqClient, vcpu: int) -> int:
    """``acrn_ioreq_complete_request``: bound check against vcpu_num, clear the bit, complete."""
    vm = client.vm
    if vcpu >= vm.vcpu_num:
        return -22
    with vm.clients_lock:
        client.pending.discard(vcpu)
    if vm.ioreq_buf is None:
        return 0
    return complete_request(vm, vcpu, slot(vm, vcpu))


def handle_cf8cfc(vm: HsmVm, req: uapi.acrn_io_request, vcpu: int) -> bool:
    """The PCI CF8/CFC combiner (``handle_cf8cfc``); True when the request was completed in the kernel."""
    if req.type != uapi.ACRN_IOREQ_TYPE_PORTIO:
        return False
    pio = vm.pio_views[vcpu] if vm.slot_views_base == vm.ioreq_buf else req.reqs.pio_request
    address = pio.address
    if address != _CF8 and not _CFC <= address < _CFC + 4:
        return False  # the common case: not a PCI configuration port
    handled = False
    if pio.address == _CF8:
        if pio.size != 4:
            log.warning("VM %d: access to 0xCF8 of size %d (the kernel WARNs)", vm.vmid, pio.size)
        if pio.direction == uapi.ACRN_IOREQ_DIR_WRITE:
            vm.pci_conf_addr = pio.value & 0xFFFFFFFF
        else:
            pio.value = vm.pci_conf_addr
        handled = True
    elif _CFC <= pio.address < _CFC + 4:
        if not vm.pci_conf_addr & _CONF1_ENABLE:
            if pio.direction == uapi.ACRN_IOREQ_DIR_READ:
                pio.value = 0xFFFFFFFF
            handled = True  # a write with the enable bit clear is dropped
        else:
            offset = pio.address - _CFC
            addr = vm.pci_conf_addr
            req.type = uapi.ACRN_IOREQ_TYPE_PCICFG
            pci = req.reqs.pci_request
            pci.bus = (addr >> 16) & 0xFF
            pci.dev = (addr >> 11) & 0x1F
            pci.func = (addr >> 8) & 0x7
            # Extended-register bits 27:24 of the address become reg bits 11:8.
            pci.reg = (addr & _PCI_LOWREG_MASK) + ((addr >> 16) & _PCI_HIGHREG_MASK) + offset
    if handled:
        complete_request(vm, vcpu, req)
    return handled


def _in_range(r: IoreqRange, req: uapi.acrn_io_request) -> bool:
    """``acrn_in_range``: same type and the whole access inside; only MMIO and PORTIO match."""
    if r.type != req.type:
        return False
    if req.type == uapi.ACRN_IOREQ_TYPE_MMIO:
        address, size = req.reqs.mmio_request.address, req.reqs.mmio_request.size
    elif req.type == uapi.ACRN_IOREQ_TYPE_PORTIO:
        address, size = req.reqs.pio_request.address, req.reqs.pio_request.size
    else:
        return False
    # u64 arithmetic, wrapping as in C.
    return bool(address >= r.start and ((address + size - 1) & U64) <= r.end)


def find_client(vm: HsmVm, req: uapi.acrn_io_request) -> IoreqClient | None:
    """First in-kernel client with a matching range, else the default client (``find_ioreq_client``)."""
    if not vm.ioreq_clients:  # no in-kernel client: nothing to match
        return vm.default_client
    for client in vm.ioreq_clients:
        if client.ranges and any(_in_range(r, req) for r in client.ranges):
            return client
    return vm.default_client


def dispatch_vm(vm: HsmVm) -> int:
    """``acrn_ioreq_dispatch``: hand every PENDING slot of one VM to its client."""
    if vm.ioreq_buf is None:
        return 0
    slot(vm, 0)  # make sure the views belong to this page
    views = vm.slot_views
    pio_views = vm.pio_views
    for i in range(min(vm.vcpu_num, uapi.ACRN_IO_REQUEST_MAX)):
        req = views[i]
        if req.processed != uapi.ACRN_IOREQ_STATE_PENDING:
            continue
        if vm.clearing:
            complete_request(vm, i, req)
            continue
        # handle_cf8cfc's own first test, inlined: most requests are not to a PCI config port.
        if req.type == uapi.ACRN_IOREQ_TYPE_PORTIO:
            address = pio_views[i].address
            if (address == _CF8 or _CFC <= address < _CFC + 4) and handle_cf8cfc(vm, req, i):
                continue
        with vm.clients_lock:
            client = find_client(vm, req)
            if client is None:
                # The kernel logs "Failed to find ioreq client!" and gives up on this VM's
                # remaining slots: they stay PENDING.
                log.error("VM %d: no ioreq client for the request of vCPU %d", vm.vmid, i)
                return -22
            req.kernel_handled = 0 if client.is_default else 1
            req.processed = uapi.ACRN_IOREQ_STATE_PROCESSING
            client.pending.add(i)
            client.wake()
        if not client.is_default:
            _run_kernel_client(client)
    return 0


def _run_kernel_client(client: IoreqClient) -> None:
    """What the in-kernel client's kthread (``ioreq_task``) does for each pending request."""
    vm = client.vm
    while True:
        with vm.clients_lock:
            if not client.pending or client.destroying:
                return
            vcpu = min(client.pending)
        assert client.handler is not None
        req = slot(vm, vcpu)
        if client.handler(client, req) < 0:
            log.error("VM %d: in-kernel client %s failed on vCPU %d", vm.vmid, client.name, vcpu)
            return
        client_complete(client, vcpu)
