"""The hypervisor side of the ioreq page (``hypervisor/dm/io_req.c``): a vCPU's slot, its request
inserted (``acrn_insert_request``) and its completion's post-work (``dm_emulate_io_complete``).

The HSM's side of the same page is :mod:`acrn.emu.hsm.ioreq` (``drivers/virt/acrn/ioreq.c``).
:class:`VcpuIoreq` is the per-vCPU binding the runtime holds for its I/O exits;
:meth:`acrn.emu.hv.Hypervisor.vcpu_ioreq` makes one.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Final

from acrn import uapi
from acrn.emu.hv.state import EINVAL, VcpuState

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor
    from acrn.emu.hv.vm import HvVm, Vcpu

_U32: Final = 0xFFFFFFFF
_U64: Final = (1 << 64) - 1
#: The 64-byte ``reqs`` union holding a PIO / MMIO request, zero-filled after it (as the copy of a
#: zero-initialised union is), and the head both share: direction at 0, size at 16.
_PIO_REQS: Final = struct.Struct("<IIQQI36x")
_MMIO_REQS: Final = struct.Struct("<IIQQQ32x")
_REQS_HEAD: Final = struct.Struct("<I12xQ")
_REQS_OFFSET: Final = uapi.acrn_io_request.reqs.offset


def slot(hv: Hypervisor, buf: int, vcpu_id: int) -> tuple[uapi.acrn_io_request, memoryview]:
    """The slot of ``vcpu_id`` in the page at ``buf``: a struct view and a byte view.

    The views of a page's 16 slots are made once and kept in ``hv._slot_views`` (dropped when its
    VM is destroyed), so binding a vCPU costs no ctypes construction."""
    views = hv._slot_views.get(buf)
    if views is None:
        views = []
        for i in range(uapi.ACRN_IO_REQUEST_MAX):
            req = uapi.acrn_io_request.from_address(buf + i * ctypes.sizeof(uapi.acrn_io_request))
            views.append((req, memoryview(req).cast("B")))
        hv._slot_views[buf] = views
    return views[vcpu_id]


def vm_slot(hv: Hypervisor, vm: HvVm, vcpu_id: int) -> uapi.acrn_io_request:
    """A vCPU's slot in the page of ``vm``, which must have one."""
    assert vm.ioreq_buffer is not None
    return slot(hv, vm.ioreq_buffer, vcpu_id)[0]


def free_slots(hv: Hypervisor, vm: HvVm) -> None:
    """Every slot of the page of ``vm`` FREE (a new page, a reset VM)."""
    for i in range(uapi.ACRN_IO_REQUEST_MAX):
        vm_slot(hv, vm, i).processed = uapi.ACRN_IOREQ_STATE_FREE


class VcpuIoreq:
    """One vCPU's slot of a VM's ioreq page: the hypervisor side of that vCPU's I/O exits.

    The only implementation of ``acrn_insert_request`` and of ``dm_emulate_io_complete``'s
    post-work (``hypervisor/dm/io_req.c``); :meth:`Hypervisor.insert_request` and
    :meth:`Hypervisor.complete_request` bind one and call it.  The VM, vCPU and slot are looked up
    once; every call checks under ``hv.lock`` that the same live VM still has the same page and
    otherwise looks them up again by vmid (a VM destroyed and created again, a page set again), so
    a binding is never stale.  Without a live VM, vCPU or page, insert is -EINVAL and complete None,
    as ACRN's checks give.
    """

    __slots__ = ("abs_id", "buf", "hv", "polling", "raw", "rel_vmid", "slot", "vcpu", "vcpu_id", "vm")

    def __init__(self, hv: Hypervisor, rel_vmid: int, vcpu_id: int, vm: HvVm, vcpu: Vcpu, buf: int) -> None:
        self.hv = hv
        self.rel_vmid = rel_vmid
        self.vcpu_id = vcpu_id
        self._bind(vm, vcpu, buf)

    def _bind(self, vm: HvVm, vcpu: Vcpu, buf: int) -> None:
        self.abs_id = vm.abs_id
        self.vm = vm
        self.vcpu = vcpu
        self.buf = buf
        self.slot, self.raw = slot(self.hv, buf, self.vcpu_id)
        self.polling = vm.is_polling_ioreq  # guest flags and load order are fixed for a VM's life

    def bound(self) -> bool:
        """Whether the binding holds, looking it up again if not (caller holds ``hv.lock``)."""
        hv = self.hv
        vm = self.vm
        if hv._vms.get(self.abs_id) is vm and vm.ioreq_buffer == self.buf:
            return True
        live = hv._vms.get(hv._abs(self.rel_vmid))
        vcpu = live.vcpu(self.vcpu_id) if live is not None else None
        if live is None or vcpu is None or live.ioreq_buffer is None:
            return False
        self._bind(live, vcpu, live.ioreq_buffer)
        return True

    def insert(
        self, type: int, direction: int, address: int, size: int, value: int, reqs: bytes | None = None
    ) -> int:
        """``acrn_insert_request``: put a request in the slot, then fire the upcall (outside the lock).

        Needs the slot FREE (else -EINVAL).  Writes ``type`` and the 64-byte ``reqs`` union whole,
        as ACRN copies it: either the given bytes or a PIO/MMIO request built from the fields
        (``value`` as given: 0 for a read), zeros after it; then completion_polling = 1 in polling
        mode (never 0), then processed = PENDING, the store that hands the request over.
        """
        hv = self.hv
        with hv.lock:
            vm = self.vm
            if (hv._vms.get(self.abs_id) is not vm or vm.ioreq_buffer != self.buf) and not self.bound():
                return EINVAL
            slot = self.slot
            if slot.processed != uapi.ACRN_IOREQ_STATE_FREE:
                return EINVAL
            slot.type = type
            if reqs is not None:
                data = bytes(reqs)[:64].ljust(64, b"\0")
                self.raw[_REQS_OFFSET : _REQS_OFFSET + 64] = data
                direction, size = _REQS_HEAD.unpack_from(data)
            elif type == uapi.ACRN_IOREQ_TYPE_MMIO:
                direction, size = direction & _U32, size & _U64
                _MMIO_REQS.pack_into(self.raw, _REQS_OFFSET, direction, 0, address & _U64, size, value & _U64)
            else:
                direction, size = direction & _U32, size & _U64
                _PIO_REQS.pack_into(self.raw, _REQS_OFFSET, direction, 0, address & _U64, size, value & _U32)
            if self.polling:
                slot.completion_polling = 1
            vcpu = self.vcpu
            vcpu.io_type, vcpu.io_direction, vcpu.io_size = type, direction, size
            slot.processed = uapi.ACRN_IOREQ_STATE_PENDING
            upcall = hv._upcall
        if upcall is not None:
            upcall()
        return 0

    def complete(self) -> int | None:
        """``dm_emulate_io_complete``'s post-work, only for a COMPLETE slot, which it frees.

        Returns None when the slot was not COMPLETE (nothing done), else the value a read returns
        (PIO/PCICFG: ``pio_request.value`` masked to the access size; MMIO: ``mmio_request.value``),
        0 for writes and for ZOMBIE vCPUs (whose slot is just freed).  The hypervisor uses the type
        *it* inserted: a PORTIO the kernel rewrote to PCICFG keeps PIO post-work, which works
        because their first 28 bytes match.
        """
        hv = self.hv
        with hv.lock:
            vm = self.vm
            if (hv._vms.get(self.abs_id) is not vm or vm.ioreq_buffer != self.buf) and not self.bound():
                return None
            slot = self.slot
            if slot.processed != uapi.ACRN_IOREQ_STATE_COMPLETE:
                return None
            value = 0
            vcpu = self.vcpu
            if vcpu.io_direction == uapi.ACRN_IOREQ_DIR_READ and vcpu.state != VcpuState.ZOMBIE:
                if vcpu.io_type == uapi.ACRN_IOREQ_TYPE_MMIO:
                    value = int(slot.reqs.mmio_request.value)
                elif vcpu.io_type in (uapi.ACRN_IOREQ_TYPE_PORTIO, uapi.ACRN_IOREQ_TYPE_PCICFG):
                    size = vcpu.io_size if 1 <= vcpu.io_size <= 4 else 4
                    value = int(slot.reqs.pio_request.value) & ((1 << (8 * size)) - 1)
            slot.processed = uapi.ACRN_IOREQ_STATE_FREE
            return value
