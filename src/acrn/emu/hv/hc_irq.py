"""The interrupt hypercalls (``hypervisor/common/hypercall.c``): inject an MSI, set an IRQ line,
the interrupt monitor.  Interrupts are recorded on the VM and told to the listeners, which deliver
them to the accelerator."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from acrn import uapi
from acrn.emu.hv.state import EINVAL
from acrn.emu.platform import NR_VPIC_PINS_TOTAL, REDIR_ENTRIES_HW, VIOAPIC_RTE_NUM

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor, Target


def hcall_inject_msi(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    data = hv.memory.read(p2, ctypes.sizeof(uapi.acrn_msi_entry))
    if data is None:
        return -1
    msi = uapi.acrn_msi_entry.from_buffer_copy(data)
    addr, value = int(msi.msi_addr), int(msi.msi_data)
    if (addr >> 20) & 0xFFF != 0xFEE:  # not an MSI address: vlapic_inject_msi refuses it
        return -1
    vm.msis.append((addr, value))
    hv._notify.msi(vm, addr, value)
    return 0


def hcall_set_irqline(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    gsi, op = p2 & 0xFFFFFFFF, (p2 >> 32) & 0xFFFFFFFF  # {u32 gsi; u32 op} by value
    gsi_count = REDIR_ENTRIES_HW if t.config.load_order == "service" else VIOAPIC_RTE_NUM
    if gsi >= gsi_count:
        return -1
    final = {
        uapi.GSI_SET_HIGH: 1,
        uapi.GSI_SET_LOW: 0,
        uapi.GSI_RAISING_PULSE: 0,
        uapi.GSI_FALLING_PULSE: 1,
    }.get(op)
    if final is not None:  # any other op does nothing but still succeeds
        if gsi < NR_VPIC_PINS_TOTAL:
            vm.pic_lines[0 if gsi == 2 else gsi] = final  # the PIT: IOAPIC pin 2 is PIC IRQ 0
        vm.ioapic_lines[gsi] = final
    hv._notify.irqline(vm, gsi, op)
    return 0


def hcall_vm_intr_monitor(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    size = 8 + 8 * 2 * uapi.MAX_PTDEV_NUM
    if not hv.memory.valid(p2, size, write=True):
        return EINVAL
    page = (ctypes.c_uint64 * (size // 8)).from_address(p2)
    cmd, buf_cnt = page[0] & 0xFFFFFFFF, page[0] >> 32
    if buf_cnt > 2 * uapi.MAX_PTDEV_NUM:
        return EINVAL
    if cmd == uapi.INTR_CMD_GET_DATA:
        words = 0
        for entry in vm.ptdev_intx:  # (physical irq, count) pairs; nothing fires physically
            if words + 2 > buf_cnt:
                break
            page[1 + words], page[2 + words] = entry.phys_pin, 0
            words += 2
        page[0] = cmd | (words << 32)
    elif cmd == uapi.INTR_CMD_DELAY_INT:
        vm.intr_inject_delay_ms = int(page[1])
    else:
        return EINVAL
    vm.intr_monitor_page = p2
    return 0
