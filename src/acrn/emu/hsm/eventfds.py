"""ioeventfd and irqfd (``drivers/virt/acrn/ioeventfd.c``, ``drivers/virt/acrn/irqfd.c``) with real
eventfds of this process.

The kernel holds an ``eventfd_ctx``; the emulator holds a duplicate of the caller's fd, and
identifies the eventfd by its ``eventfd-id`` from /proc/self/fdinfo, so two fds of the same
eventfd are the same context, as in the kernel.

irqfd: the kernel hooks the eventfd's wait queue and injects an MSI on each wake-up without
reading the counter.  The emulator watches each eventfd edge-triggered (EPOLLET) from one thread
per VM ("acrn_irqfd-<vmid>", started at the first IRQFD), so the counter is never consumed either;
writes that arrive before the thread collects the previous one coalesce into one injection.
Differences: closing the caller's eventfd does not shut the irqfd down (the duplicate keeps it
open; the kernel would see POLLHUP); DEASSIGN or destroy does.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from acrn import uapi
from acrn.emu.hsm.ioreq import IoreqClient

if TYPE_CHECKING:
    from acrn.emu.hsm.vm import HsmVm

log = logging.getLogger("acrn.emu.hsm")

U64 = (1 << 64) - 1


class EventfdCtx:
    """A reference to an eventfd (``eventfd_ctx``): a private duplicate fd plus the eventfd's id."""

    def __init__(self, fd: int) -> None:
        """``eventfd_ctx_fdget``: raises OSError(EBADF) for a bad fd, OSError(EINVAL) for a non-eventfd."""
        if not 0 <= fd < (1 << 31):
            raise OSError(errno.EBADF, "bad file descriptor")
        try:
            dup = os.dup(fd)
        except OSError:
            raise OSError(errno.EBADF, "bad file descriptor") from None
        try:
            link = os.readlink(f"/proc/self/fd/{dup}")
            if link != "anon_inode:[eventfd]":
                raise OSError(errno.EINVAL, "not an eventfd")
            ident: object = ("fd", fd)
            with open(f"/proc/self/fdinfo/{dup}") as f:
                for line in f:
                    if line.startswith("eventfd-id:"):
                        ident = ("id", int(line.split(":", 1)[1]))
        except BaseException:
            os.close(dup)
            raise
        self.fd = dup
        self.ident = ident

    def signal(self) -> None:
        """``eventfd_signal(ctx, 1)``."""
        try:
            os.eventfd_write(self.fd, 1)
        except OSError as e:
            log.debug("eventfd signal failed: %s", e)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --------------------------------------------------------------------------------------------
# ioeventfd
# --------------------------------------------------------------------------------------------
@dataclass
class Ioeventfd:
    """``struct hsm_ioeventfd``."""

    ctx: EventfdCtx
    addr: int
    length: int
    type: int
    wildcard: bool
    data: int


class IoeventfdSet:
    """A VM's ioeventfds and its in-kernel ioreq client "ioeventfd-<vmid>"."""

    def __init__(self, vm: HsmVm) -> None:
        self.vm = vm
        self.lock = threading.Lock()
        self.entries: list[Ioeventfd] = []
        self.client = IoreqClient(vm, f"ioeventfd-{vm.vmid}", False, self._handler)

    def config(self, args: uapi.acrn_ioeventfd) -> int:
        """``acrn_ioeventfd_config`` (the reserved check is done by the caller, as in hsm.c)."""
        if args.flags & uapi.ACRN_IOEVENTFD_FLAG_DEASSIGN:
            return self._deassign(args)
        return self._assign(args)

    def _assign(self, args: uapi.acrn_ioeventfd) -> int:
        # acrn_ioeventfd_assign's check order: overflow, length, eventfd, conflict.
        if (args.addr + args.len) & U64 < args.addr:
            return -errno.EINVAL
        if args.len not in (1, 2, 4, 8):
            return -errno.EINVAL
        try:
            ctx = EventfdCtx(args.fd)
        except OSError as e:
            return -(e.errno or errno.EINVAL)
        p = Ioeventfd(
            ctx=ctx,
            addr=args.addr,
            length=args.len,
            type=uapi.ACRN_IOREQ_TYPE_PORTIO
            if args.flags & uapi.ACRN_IOEVENTFD_FLAG_PIO
            else uapi.ACRN_IOREQ_TYPE_MMIO,
            wildcard=not args.flags & uapi.ACRN_IOEVENTFD_FLAG_DATAMATCH,
            data=args.data if args.flags & uapi.ACRN_IOEVENTFD_FLAG_DATAMATCH else 0,
        )
        with self.lock:
            for q in self.entries:
                if (
                    q.ctx.ident == ctx.ident
                    and q.addr == p.addr
                    and q.type == p.type
                    and (q.wildcard or p.wildcard or q.data == p.data)
                ):
                    ctx.close()
                    return -errno.EEXIST
            ret = self.client.range_add(p.type, p.addr, p.addr + p.length - 1)
            if ret < 0:
                ctx.close()
                return ret
            self.entries.append(p)
        return 0

    def _deassign(self, args: uapi.acrn_ioeventfd) -> int:
        try:
            ctx = EventfdCtx(args.fd)
        except OSError as e:
            return -(e.errno or errno.EINVAL)
        try:
            with self.lock:
                # The first entry with this eventfd, whatever its address, type or data
                # (acrn_ioeventfd_deassign).
                for i, p in enumerate(self.entries):
                    if p.ctx.ident == ctx.ident:
                        self.client.range_del(p.type, p.addr, p.addr + p.length - 1)
                        del self.entries[i]
                        p.ctx.close()
                        break
        finally:
            ctx.close()
        return 0

    def _handler(self, client: IoreqClient, req: uapi.acrn_io_request) -> int:
        """``acrn_ioeventfd_handler``: reads give 0; a write signals the entry with the same start."""
        if req.type == uapi.ACRN_IOREQ_TYPE_MMIO:
            r = req.reqs.mmio_request
            if r.direction == uapi.ACRN_IOREQ_DIR_READ:
                r.value = 0
                return 0
            addr, size, val = r.address, r.size, r.value
        else:
            p = req.reqs.pio_request
            if p.direction == uapi.ACRN_IOREQ_DIR_READ:
                p.value = 0
                return 0
            addr, size, val = p.address, p.size, p.value
        with self.lock:
            for e in self.entries:
                if (
                    e.type == req.type
                    and e.addr == addr
                    and e.length >= size
                    and (e.wildcard or e.data == val)
                ):
                    e.ctx.signal()
                    break
        return 0

    def close(self) -> None:
        """``acrn_ioeventfd_deinit``: the client goes, then every ioeventfd."""
        with self.lock:
            for p in self.entries:
                p.ctx.close()
            self.entries.clear()


# --------------------------------------------------------------------------------------------
# irqfd
# --------------------------------------------------------------------------------------------
class Irqfd:
    """``struct hsm_irqfd``: an eventfd bound to an MSI, watched through its own edge-triggered epoll."""

    def __init__(self, ctx: EventfdCtx, msi_addr: int, msi_data: int) -> None:
        self.ctx = ctx
        self.msi_addr = msi_addr
        self.msi_data = msi_data
        self.ep = select.epoll()
        self.ep.register(ctx.fd, select.EPOLLIN | select.EPOLLET)

    def collect(self) -> bool:
        """Whether the eventfd was signalled since the last call (consumes the edge, not the counter)."""
        return bool(self.ep.poll(0))

    def close(self) -> None:
        self.ep.close()
        self.ctx.close()


class IrqfdSet:
    """A VM's irqfds and the thread that turns their signals into HC_INJECT_MSI."""

    def __init__(self, vm: HsmVm) -> None:
        self.vm = vm
        self.lock = threading.Lock()
        self.entries: list[Irqfd] = []
        self._master = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._master.register(self._wake, select.EPOLLIN)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"acrn_irqfd-{vm.vmid}", daemon=True)
        self._thread.start()

    def config(self, args: uapi.acrn_irqfd) -> int:
        if args.flags & uapi.ACRN_IRQFD_FLAG_DEASSIGN:
            return self._deassign(args)
        return self._assign(args)

    def _assign(self, args: uapi.acrn_irqfd) -> int:
        try:
            ctx = EventfdCtx(args.fd)
        except OSError as e:
            return -(e.errno or errno.EINVAL)
        with self.lock:
            if any(e.ctx.ident == ctx.ident for e in self.entries):
                ctx.close()
                return -errno.EBUSY
            irqfd = Irqfd(ctx, args.msi.msi_addr, args.msi.msi_data)
            self.entries.append(irqfd)
            # The kernel polls once at assign and injects at once if the eventfd is already signalled.
            if irqfd.collect():
                self._inject(irqfd)
            self._master.register(irqfd.ep.fileno(), select.EPOLLIN)
        return 0

    def _deassign(self, args: uapi.acrn_irqfd) -> int:
        try:
            ctx = EventfdCtx(args.fd)
        except OSError as e:
            return -(e.errno or errno.EINVAL)
        try:
            with self.lock:
                for i, irqfd in enumerate(self.entries):
                    if irqfd.ctx.ident == ctx.ident:
                        self._master.unregister(irqfd.ep.fileno())
                        del self.entries[i]
                        irqfd.close()
                        break
        finally:
            ctx.close()
        return 0

    def _inject(self, irqfd: Irqfd) -> None:
        """``acrn_msi_inject``: failures are only logged."""
        msi = uapi.acrn_msi_entry(msi_addr=irqfd.msi_addr, msi_data=irqfd.msi_data)
        with self.vm.driver.memory.kernel_copy(bytes(msi)) as kcopy:
            ret = self.vm.hypercall(uapi.HC_INJECT_MSI, self.vm.vmid, kcopy.gpa)
        if ret < 0:
            log.debug("VM %d: irqfd MSI injection failed: %d", self.vm.vmid, ret)

    def _run(self) -> None:
        while True:
            events = self._master.poll()
            with self.lock:
                if self._stop:
                    return
                ready = {fd for fd, _ in events}
                for irqfd in list(self.entries):
                    if irqfd.ep.fileno() in ready and irqfd.collect():
                        self._inject(irqfd)

    def close(self) -> None:
        """``acrn_irqfd_deinit``: stop the thread, shut down every irqfd."""
        with self.lock:
            self._stop = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self.lock:
            for irqfd in self.entries:
                irqfd.close()
            self.entries.clear()
        self._master.close()
        os.close(self._wake)
