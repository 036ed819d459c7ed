"""acrn-dm's ioreq loop (``devicemodel/core/main.c: vm_loop``) over an abstract ioreq client.

The loop is the default client's side of the protocol (``docs/architecture.md``): block in ATTACH until the
HSM dispatcher has moved requests to PROCESSING, then for every slot ``i < vcpu_num`` that is
PROCESSING **and** not ``kernel_handled``, emulate the access, write the result of a read into the
slot, and call NOTIFY_REQUEST_FINISH for ``i``.  Userspace never writes ``processed`` itself: the
kernel completes the request on NOTIFY.  The loop ends when ATTACH fails (``-ENODEV`` after
DESTROY_IOREQ_CLIENT, which is how acrn-dm stops it) or after :meth:`IoreqLoop.stop`.

Unclaimed reads get acrn-dm's all-ones values: ``0xFFFFFFFF`` for PIO and PCI config space,
``~0`` (64 bits) for MMIO, whatever the access size.

The client is anything with the :class:`IoreqPort` shape: the HSM client of ``acrn.hsm`` for a
real or emulated VM, or a fake in tests.  :meth:`IoreqLoop.handle_slot` emulates one slot without
notifying; :meth:`IoreqLoop.complete` emulates and notifies one slot, for a fast path that completes
requests on the vCPU thread itself.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
from typing import Final, Protocol

from acrn import uapi
from acrn.dm.bus import IoBus

log = logging.getLogger(__name__)

#: acrn-dm's values for an unclaimed read (VHM_REQ_PIO_INVAL / VHM_REQ_MMIO_INVAL).
PIO_INVALID: Final = 0xFFFFFFFF
MMIO_INVALID: Final = 0xFFFFFFFFFFFFFFFF
PCI_INVALID: Final = 0xFFFFFFFF


class IoreqPort(Protocol):
    """The default ioreq client of one VM, as the loop needs it."""

    vcpu_num: int

    def ioreq_buffer(self) -> uapi.acrn_io_request_buffer:
        """The shared 4 KiB page (slot index = vCPU id)."""

    def attach(self) -> None:
        """Block until requests are pending; raise OSError(ENODEV) once the client is destroyed."""

    def notify_request_finish(self, vcpu: int) -> None:
        """NOTIFY_REQUEST_FINISH for ``vcpu``'s slot."""


class PciConfigHandler(Protocol):
    """Config-space emulation for PCICFG requests (the kernel's CF8/CFC combiner makes them)."""

    def cfg_read(self, bus: int, dev: int, func: int, reg: int, size: int) -> int | None:
        """The value read, or None when no device answers (the slot then gets all-ones)."""

    def cfg_write(self, bus: int, dev: int, func: int, reg: int, size: int, value: int) -> None: ...


class NoPciDevices:
    """The default config-space handler: an empty PCI bus (reads all-ones, writes dropped)."""

    def cfg_read(self, bus: int, dev: int, func: int, reg: int, size: int) -> int | None:
        return None

    def cfg_write(self, bus: int, dev: int, func: int, reg: int, size: int, value: int) -> None:
        return None


def batch_scheduling() -> None:
    """Put the calling thread (the ioreq thread) in SCHED_BATCH; best effort.

    A woken SCHED_BATCH thread does not preempt the thread that woke it.  The vCPU that posts a
    request blocks right after waking this thread; preempting it would only make this thread
    block on the GIL the vCPU still holds (three context switches per hand-over instead of one).
    The vCPU threads stay in the normal policy: a batch AP woken to poll for its SIPI would not
    preempt a spinning BSP (benchmarks/README.md).
    """
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None:
        return
    try:
        setter(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        log.debug("SCHED_BATCH refused", exc_info=True)


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1 if 0 < size <= 8 else MMIO_INVALID


class IoreqLoop:
    """acrn-dm's ``vm_loop``: ATTACH, scan, emulate, NOTIFY, until the client is destroyed."""

    def __init__(self, client: IoreqPort, bus: IoBus, pci: PciConfigHandler | None = None) -> None:
        self.client = client
        self.bus = bus
        self.pci: PciConfigHandler = pci if pci is not None else NoPciDevices()
        # Set unless NOTIFY is postponed (see notify_postponed).
        self._resumed = threading.Event()
        self._resumed.set()
        # Bumped each time NOTIFY is postponed, under _notify_lock, which is also held from the
        # decision to NOTIFY to the NOTIFY itself: a request whose emulation overlapped a reset
        # request is never notified, not even when the reset is over by the time it is done.
        self._epoch = 0
        self._notify_lock = threading.Lock()
        #: NOTIFY_REQUEST_FINISH calls that failed (logged; acrn-dm goes on as well).
        self.notify_errors = 0
        #: Requests emulated so far, and requests whose type the loop does not know.
        self.handled = 0
        self.bad_requests = 0
        #: The OSError that ended :meth:`run`, if any (ENODEV is the normal end).
        self.exit_error: OSError | None = None
        self._stop = threading.Event()
        # Views into the shared page, made once per page (a ctypes array element or union member
        # is a new object at every access): the slots, and the request each slot last handled
        # by handle_slot with its PIO view.
        self._views_page: int | None = None
        self._views: list[uapi.acrn_io_request] = []
        self._last_slot: uapi.acrn_io_request | None = None
        self._last_pio: uapi.acrn_pio_request | None = None

    @property
    def notify_postponed(self) -> bool:
        """While True, requests are emulated but NOTIFY is held back, as acrn-dm does while a guest
        system reset or suspend is pending (``vm_loop``); CLEAR_VM_IOREQ and RESET_VM then
        complete them.  :meth:`run` does not ATTACH again until it is False: acrn-dm's loop thread
        runs the reset itself right after that scan, so it never sees the held request twice."""
        return not self._resumed.is_set()

    @notify_postponed.setter
    def notify_postponed(self, value: bool) -> None:
        if value:
            with self._notify_lock:  # waits for a NOTIFY already decided on
                self._epoch += 1
                self._resumed.clear()
        else:
            self._resumed.set()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current scan (or a postponement).  It does not
        interrupt a blocked ATTACH: destroy the ioreq client for that (acrn-dm's order: PAUSE_VM,
        then DESTROY_IOREQ_CLIENT, which makes ATTACH fail with ENODEV)."""
        self._stop.set()
        self._resumed.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Loop until ATTACH fails or :meth:`stop` is called; ENODEV ends the loop quietly."""
        while not self._stop.is_set():
            try:
                self.client.attach()
            except OSError as e:
                # acrn-dm breaks out of vm_loop on any ATTACH error.
                self.exit_error = e
                if e.errno != errno.ENODEV:
                    log.warning("ioreq loop: ATTACH failed: %s", e)
                return
            self.scan()
            self._resumed.wait()  # a guest reset is under way: ATTACH again once it is done

    def scan(self) -> int:
        """One pass over the slots: emulate and notify every request owned by userspace.

        Returns how many requests were handled.  Safe to call without ATTACH (e.g. from a test).
        """
        buf = self.client.ioreq_buffer()
        page = ctypes.addressof(buf)
        if page != self._views_page:
            self._views = list(buf.req_slot)
            self._views_page = page
        views = self._views
        count = 0
        for i in range(min(self.client.vcpu_num, uapi.ACRN_IO_REQUEST_MAX)):
            slot = views[i]
            # One aligned 32-bit load: the "atomic load" of acrn-dm.  The kernel release-stores
            # PROCESSING after filling the slot, so the request body is complete once we see it.
            if slot.processed != uapi.ACRN_IOREQ_STATE_PROCESSING or slot.kernel_handled != 0:
                continue
            self.complete(i, slot)
            count += 1
        return count

    def complete(self, vcpu: int, slot: uapi.acrn_io_request) -> None:
        """Emulate ``vcpu``'s request (``slot``) and NOTIFY it, as acrn-dm's ``handle_vmexit`` does.

        No NOTIFY while a guest reset is pending, nor when one was requested while the request
        was being emulated (the reset sequence completes it: CLEAR_VM_IOREQ,
        ``acrn_ioreq_request_clear``); a NOTIFY after the reset would complete a slot of the
        restarted guest.  A failed NOTIFY is logged and the loop goes on (acrn-dm's
        ``vm_notify_request_done``): it fails when the VM is torn down under a request in flight.
        """
        epoch = self._epoch
        self.handle_slot(slot)
        with self._notify_lock:
            if epoch != self._epoch or not self._resumed.is_set():
                return
            try:
                self.client.notify_request_finish(vcpu)
            except OSError as e:
                self.notify_errors += 1
                log.warning("ioreq: NOTIFY_REQUEST_FINISH of vCPU %d failed: %s", vcpu, e)

    def handle_slot(self, slot: uapi.acrn_io_request) -> None:
        """Emulate one request in place (the value of a read is written into the slot).

        Does not look at ``processed`` and does not notify: the caller owns the slot.  A device
        that raises is logged and treated as absent, so one bad device cannot hang a vCPU.
        """
        self.handled += 1
        kind = slot.type
        if kind == uapi.ACRN_IOREQ_TYPE_PORTIO:
            if slot is self._last_slot:
                pio = self._last_pio
            else:
                pio = slot.reqs.pio_request
                self._last_slot, self._last_pio = slot, pio
            assert pio is not None
            self._handle_pio(pio)
        elif kind == uapi.ACRN_IOREQ_TYPE_MMIO:
            self._handle_mmio(slot.reqs.mmio_request)
        elif kind == uapi.ACRN_IOREQ_TYPE_PCICFG:
            self._handle_pci(slot.reqs.pci_request)
        else:
            # acrn-dm exits on an unknown type; the emulator logs it and completes the request.
            self.bad_requests += 1
            log.error("ioreq: unknown request type %d", kind)

    # ------------------------------------------------------------------ per type
    def _handle_pio(self, req: uapi.acrn_pio_request) -> None:
        port, size = req.address, req.size  # ctypes integer fields read as int
        is_read = req.direction == uapi.ACRN_IOREQ_DIR_READ
        try:
            if is_read:
                v = self.bus.try_pio_read(port, size)
                req.value = PIO_INVALID if v is None else v & PIO_INVALID
            else:
                self.bus.try_pio_write(
                    port, size, req.value & ((1 << (8 * size)) - 1 if 0 < size <= 8 else MMIO_INVALID)
                )
        except Exception:
            log.exception("ioreq: PIO %s port %#x size %d failed", "read" if is_read else "write", port, size)
            if is_read:
                req.value = PIO_INVALID

    def _handle_mmio(self, req: uapi.acrn_mmio_request) -> None:
        address, size = int(req.address), int(req.size)
        is_read = req.direction == uapi.ACRN_IOREQ_DIR_READ
        try:
            if is_read:
                v = self.bus.try_mmio_read(address, size)
                req.value = MMIO_INVALID if v is None else v
            else:
                self.bus.try_mmio_write(address, size, int(req.value) & _mask(size))
        except Exception:
            log.exception("ioreq: MMIO %s %#x size %d failed", "read" if is_read else "write", address, size)
            if is_read:
                req.value = MMIO_INVALID

    def _handle_pci(self, req: uapi.acrn_pci_request) -> None:
        b, d, f, reg, size = int(req.bus), int(req.dev), int(req.func), int(req.reg), int(req.size)
        is_read = req.direction == uapi.ACRN_IOREQ_DIR_READ
        try:
            if is_read:
                v = self.pci.cfg_read(b, d, f, reg, size)
                req.value = PCI_INVALID if v is None else v & PCI_INVALID
            else:
                self.pci.cfg_write(b, d, f, reg, size, int(req.value) & _mask(size))
        except Exception:
            log.exception("ioreq: PCI config %02x:%02x.%x reg %#x failed", b, d, f, reg)
            if is_read:
                req.value = PCI_INVALID
