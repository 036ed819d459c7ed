"""The ioreq hypercall (``hypervisor/common/hypercall.c``): set a VM's ioreq page.

HC_NOTIFY_REQUEST_FINISH, which runs on every I/O exit, is inline in
:meth:`acrn.emu.hv.Hypervisor.hypercall` instead of a handler here; the slots themselves are
:mod:`acrn.emu.hv.io_req`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from acrn import uapi
from acrn.emu.hv.io_req import free_slots

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor, Target


def hcall_set_ioreq_buffer(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    data = hv.memory.read(p2, 8)
    if data is None:
        return -1
    iobuf = int.from_bytes(data, "little")
    if not hv.memory.valid(iobuf, uapi.ACRN_IO_REQUEST_BUFFER_SIZE, write=True):
        vm.ioreq_buffer = None  # unmapped GPA: the buffer is dropped (hcall_set_ioreq_buffer)
        return -1
    vm.ioreq_buffer = iobuf
    free_slots(hv, vm)
    return 0
