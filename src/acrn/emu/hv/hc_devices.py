"""The device hypercalls (``hypervisor/common/hypercall.c``): PCI and MMIO passthrough, INTx
remapping of passthrough devices, hypervisor-emulated vdevs.

Physical devices do not exist here: all of this is bookkeeping on the VM (``pcidevs``,
``mmiodevs``, ``ptdev_intx``, ``vdevs``) with ACRN's checks and return codes.
"""

from __future__ import annotations

import ctypes
import errno
from typing import TYPE_CHECKING, Final, TypeVar

from acrn import uapi
from acrn.emu.hv.state import EINVAL
from acrn.emu.hv.vm import PtdevIntx
from acrn.emu.platform import NR_VPIC_PINS_TOTAL, VIOAPIC_RTE_NUM
from acrn.emu.service_vm_memory import PAGE_SIZE

if TYPE_CHECKING:
    from acrn.emu.hv.hypervisor import Hypervisor, Target
    from acrn.emu.hv.vm import HvVm

_U16: Final = 0xFFFF

# Hypervisor-emulated vdev ids (hcall_add_vdev's table): vendor | device << 16.
IVSHMEM_DEV_ID: Final = 0x1AF4 | (0x1110 << 16)
MCS9900_DEV_ID: Final = 0x9710 | (0x9900 << 16)
VRP_DEV_ID: Final = 0x8086 | (0x9D14 << 16)

_T = TypeVar("_T", bound=ctypes.Structure)


def _read_struct(hv: Hypervisor, addr: int, cls: type[_T]) -> _T | None:
    data = hv.memory.read(addr, ctypes.sizeof(cls))
    return None if data is None else cls.from_buffer_copy(data)


def _ptdev_lookup(vm: HvVm, irq: uapi.acrn_ptdev_irq) -> tuple[bool, bool] | None:
    """(pic_pin, virt_pin_ok) for a valid INTx request on an assigned device, else None."""
    if irq.type != uapi.ACRN_PTDEV_IRQ_INTX:
        return None
    dev = vm.pcidevs.get(int(irq.virt_bdf))
    if dev is None or dev.phys_bdf != irq.phys_bdf:
        return None
    pic_pin = (irq.intx.is_pic_pin & 0xFF) != 0  # the hypervisor reads a bool + 3 reserved bytes
    gsi_count = NR_VPIC_PINS_TOTAL if pic_pin else VIOAPIC_RTE_NUM
    return pic_pin, irq.intx.virt_pin < gsi_count


def hcall_set_ptdev_intr_info(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    irq = _read_struct(hv, p2, uapi.acrn_ptdev_irq)
    found = _ptdev_lookup(vm, irq) if irq is not None else None
    if irq is None or found is None:
        return -1
    pic_pin, virt_ok = found
    if not virt_ok or irq.intx.phys_pin >= hv.platform.phys_gsi_num:
        return -1
    _remove_intx(vm, int(irq.intx.virt_pin), pic_pin)
    vm.ptdev_intx.append(
        PtdevIntx(
            int(irq.virt_bdf), int(irq.phys_bdf), int(irq.intx.virt_pin), int(irq.intx.phys_pin), pic_pin
        )
    )
    return 0


def hcall_reset_ptdev_intr_info(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    irq = _read_struct(hv, p2, uapi.acrn_ptdev_irq)
    found = _ptdev_lookup(vm, irq) if irq is not None else None
    if irq is None or found is None or not found[1]:
        return -1
    _remove_intx(vm, int(irq.intx.virt_pin), found[0])
    return 0


def _remove_intx(vm: HvVm, virt_pin: int, pic_pin: bool) -> None:
    vm.ptdev_intx = [e for e in vm.ptdev_intx if not (e.virt_pin == virt_pin and e.pic_pin == pic_pin)]


def _phys_bdf_owner(hv: Hypervisor, phys_bdf: int) -> HvVm | None:
    for vm in hv._vms.values():
        if any(d.phys_bdf == phys_bdf for d in vm.pcidevs.values()):
            return vm
    return None


def hcall_assign_pcidev(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    # Physical devices do not exist here: the platform lists the BDFs the Service VM "owns";
    # one that is unknown or already given to a VM is -ENODEV, as vpci_assign_pcidev says.
    vm = t.vm
    assert vm is not None
    dev = _read_struct(hv, p2, uapi.acrn_pcidev)
    if dev is None:
        return EINVAL
    if dev.phys_bdf not in hv.platform.pci_devices or _phys_bdf_owner(hv, int(dev.phys_bdf)):
        return -errno.ENODEV
    vm.pcidevs[int(dev.virt_bdf)] = dev
    return 0


def hcall_deassign_pcidev(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    dev = _read_struct(hv, p2, uapi.acrn_pcidev)
    if dev is None:
        return EINVAL
    cur = vm.pcidevs.get(int(dev.virt_bdf))
    if cur is None or cur.phys_bdf != dev.phys_bdf:
        return -errno.ENODEV
    del vm.pcidevs[int(dev.virt_bdf)]
    vm.ptdev_intx = [e for e in vm.ptdev_intx if e.virt_bdf != dev.virt_bdf]
    return 0


def hcall_assign_mmiodev(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    # Bookkeeping only: resources must be page-aligned and not already given to a VM.
    vm = t.vm
    assert vm is not None
    dev = _read_struct(hv, p2, uapi.acrn_mmiodev)
    if dev is None:
        return EINVAL
    for res in dev.res:
        if res.size == 0:
            continue
        if (res.user_vm_pa | res.service_vm_pa | res.size) & (PAGE_SIZE - 1):
            return EINVAL
        lo, hi = int(res.service_vm_pa), int(res.service_vm_pa + res.size)
        for other in hv._vms.values():
            for d in other.mmiodevs:
                if any(r.size and r.service_vm_pa < hi and lo < r.service_vm_pa + r.size for r in d.res):
                    return EINVAL
    vm.mmiodevs.append(dev)
    return 0


def hcall_deassign_mmiodev(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    dev = _read_struct(hv, p2, uapi.acrn_mmiodev)
    if dev is None:
        return EINVAL
    for i, d in enumerate(vm.mmiodevs):
        if bytes(d.res) == bytes(dev.res):
            del vm.mmiodevs[i]
            return 0
    return EINVAL


def _vdev_has_create(hv: Hypervisor, dev_id: int) -> bool | None:
    """None: not in the table; else whether the entry has a create op."""
    if dev_id == IVSHMEM_DEV_ID:
        return hv.platform.ivshmem_enabled
    if dev_id in (MCS9900_DEV_ID, VRP_DEV_ID):
        return True
    return None


def hcall_add_vdev(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    dev = _read_struct(hv, p2, uapi.acrn_vdev)
    if dev is None or not _vdev_has_create(hv, int(dev.id.value)):
        return EINVAL
    bdf = int(dev.slot) & _U16
    if bdf in vm.vdevs or bdf in vm.pcidevs:
        return EINVAL  # the vBDF is taken
    vm.vdevs[bdf] = dev
    return 0


def hcall_remove_vdev(hv: Hypervisor, t: Target, p1: int, p2: int) -> int:
    vm = t.vm
    assert vm is not None
    dev = _read_struct(hv, p2, uapi.acrn_vdev)
    if dev is None or _vdev_has_create(hv, int(dev.id.value)) is None:
        return EINVAL
    bdf = int(dev.slot) & _U16  # the vdev is found by BDF = low 16 bits of slot
    if bdf not in vm.vdevs:
        return EINVAL
    del vm.vdevs[bdf]
    return 0
