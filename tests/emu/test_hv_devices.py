"""SET_MEMORY_REGIONS, interrupts, passthrough/vdev state rules and PM_GET_CPU_STATE's command word: the
``hcall_*`` handlers of ``hypervisor/common/hypercall.c`` (see docs/ioctls.md)."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator

import pytest

from acrn import uapi
from acrn.emu.hv import Hypervisor, VmState

EINVAL = -errno.EINVAL
ENODEV = -errno.ENODEV
ENOTTY = -errno.ENOTTY


class Buf:
    """A page-aligned buffer of ``pages`` pages (host memory that can back guest RAM)."""

    def __init__(self, pages: int = 1) -> None:
        self._raw = ctypes.create_string_buffer(4096 * (pages + 1))
        self.addr = (ctypes.addressof(self._raw) + 4095) & ~4095


#: ioreq pages the hypervisor writes into; kept alive for the test that made them.
_PAGES: list[Buf] = []


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    yield Hypervisor()
    _PAGES.clear()


def make_vm(hv: Hypervisor, state: VmState = VmState.CREATED, name: bytes = b"") -> int:
    cv = uapi.acrn_vm_creation()
    ctypes.memmove(ctypes.addressof(cv.uuid), name, len(name))
    with hv.memory.kernel_copy(bytes(cv)) as kc:
        assert hv.hypercall(uapi.HC_CREATE_VM, kc.gpa) == 0
        vmid = int(uapi.acrn_vm_creation.from_buffer_copy(kc.contents()).vmid)
    page = Buf()
    _PAGES.append(page)
    with hv.memory.kernel_copy(page.addr.to_bytes(8, "little")) as kc:
        assert hv.hypercall(uapi.HC_SET_IOREQ_BUFFER, vmid, kc.gpa) == 0
    if state in (VmState.RUNNING, VmState.PAUSED):
        assert hv.hypercall(uapi.HC_START_VM, vmid) == 0
    if state == VmState.PAUSED:
        assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    return vmid


def regions(hv: Hypervisor, vmid: int, ops: list[tuple[int, int, int, int, int]]) -> int:
    """One HC_VM_SET_MEMORY_REGIONS with (type, attr, gpa, service_vm_pa, size) regions."""
    arr = (uapi.vm_memory_region_op * max(len(ops), 1))(*[uapi.vm_memory_region_op(*op) for op in ops])
    with hv.memory.kernel_copy(bytes(arr)) as rk:
        hdr = uapi.vm_memory_region_batch(vmid=vmid, regions_num=len(ops), regions_gpa=rk.gpa)
        with hv.memory.kernel_copy(bytes(hdr)) as hk:
            return hv.hypercall(uapi.HC_VM_SET_MEMORY_REGIONS, hk.gpa)


RWX_WB = uapi.ACRN_MEM_ACCESS_RWX | uapi.ACRN_MEM_TYPE_WB


# --- memory regions ----------------------------------------------------------------------------
def test_memory_region_add_maps_ept(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    ram = Buf(2)
    assert regions(hv, vmid, [(uapi.MR_ADD, RWX_WB, 0x100000, ram.addr, 0x2000)]) == 0
    (r,) = hv.vm(vmid).memory_regions  # type: ignore[union-attr]
    assert (r.gpa, r.hpa, r.size, r.prot, r.memtype) == (0x100000, ram.addr, 0x2000, 7, uapi.ACRN_MEM_TYPE_WB)


def test_memory_region_size_must_be_page_multiple(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert regions(hv, vmid, [(uapi.MR_ADD, RWX_WB, 0, Buf().addr, 0x800)]) == EINVAL


def test_memory_region_add_needs_valid_service_vm_range(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert regions(hv, vmid, [(uapi.MR_ADD, RWX_WB, 0, 0x1000, 0x1000)]) == EINVAL


def test_memory_regions_stop_at_first_failure_keeping_earlier(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    ram = Buf(3)
    ops = [
        (uapi.MR_ADD, RWX_WB, 0x0, ram.addr, 0x1000),
        (uapi.MR_ADD, RWX_WB, 0x1000, ram.addr + 0x1000, 0x123),
        (uapi.MR_ADD, RWX_WB, 0x2000, ram.addr + 0x2000, 0x1000),
    ]
    assert regions(hv, vmid, ops) == EINVAL
    assert [r.gpa for r in hv.vm(vmid).memory_regions] == [0]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("attr", "memtype"),
    [
        (uapi.ACRN_MEM_TYPE_WB | uapi.ACRN_MEM_TYPE_UC, uapi.ACRN_MEM_TYPE_WB),
        (uapi.ACRN_MEM_TYPE_WT | uapi.ACRN_MEM_TYPE_WC, uapi.ACRN_MEM_TYPE_WT),
        (uapi.ACRN_MEM_TYPE_WC | uapi.ACRN_MEM_TYPE_WP, uapi.ACRN_MEM_TYPE_WC),
        (uapi.ACRN_MEM_TYPE_WP | uapi.ACRN_MEM_TYPE_UC, uapi.ACRN_MEM_TYPE_WP),
        (0, uapi.ACRN_MEM_TYPE_UC),
    ],
)
def test_memory_type_priority(hv: Hypervisor, attr: int, memtype: int) -> None:
    vmid = make_vm(hv)
    assert regions(hv, vmid, [(uapi.MR_ADD, 1 | attr, 0, Buf().addr, 0x1000)]) == 0
    assert hv.vm(vmid).memory_regions[0].memtype == memtype  # type: ignore[union-attr]


def test_memory_region_del_needs_mapped_range(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    ram = Buf(2)
    assert regions(hv, vmid, [(uapi.MR_ADD, RWX_WB, 0x10000, ram.addr, 0x2000)]) == 0
    assert regions(hv, vmid, [(uapi.MR_DEL, 0, 0x11000, 0, 0x2000)]) == EINVAL  # half outside
    assert regions(hv, vmid, [(uapi.MR_DEL, 0, 0x11000, 0, 0x1000)]) == 0
    (r,) = hv.vm(vmid).memory_regions  # type: ignore[union-attr]
    assert (r.gpa, r.size) == (0x10000, 0x1000)


def test_memory_regions_empty_batch_returns_minus_one(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert regions(hv, vmid, []) == -1


def test_memory_regions_rejected_for_running_high_severity_vm(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.RUNNING, name=b"POST_RT_VM1")
    assert regions(hv, vmid, [(uapi.MR_ADD, RWX_WB, 0, Buf().addr, 0x1000)]) == -1
    std = make_vm(hv, VmState.RUNNING)
    assert regions(hv, std, [(uapi.MR_ADD, RWX_WB, 0, Buf().addr, 0x1000)]) == 0


def test_memory_regions_powered_off_target(hv: Hypervisor) -> None:
    assert regions(hv, 1, [(uapi.MR_ADD, RWX_WB, 0, Buf().addr, 0x1000)]) == -1


def test_memory_regions_target_from_batch_header(hv: Hypervisor) -> None:
    assert regions(hv, 15, [(uapi.MR_ADD, RWX_WB, 0, Buf().addr, 0x1000)]) == ENOTTY  # pre-launched


# --- interrupts ----------------------------------------------------------------------------------
def inject_msi(hv: Hypervisor, vmid: int, addr: int, data: int) -> int:
    with hv.memory.kernel_copy(bytes(uapi.acrn_msi_entry(addr, data))) as kc:
        return hv.hypercall(uapi.HC_INJECT_MSI, vmid, kc.gpa)


def test_inject_msi_records_and_checks_address(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.RUNNING)
    assert inject_msi(hv, vmid, 0xFEE01000, 0x4031) == 0
    assert inject_msi(hv, vmid, 0xFED00000, 0x31) == -1
    assert hv.vm(vmid).msis == [(0xFEE01000, 0x4031)]  # type: ignore[union-attr]


def test_inject_msi_state_and_severity(hv: Hypervisor) -> None:
    assert inject_msi(hv, 1, 0xFEE00000, 0x30) == -1  # powered off
    rt = make_vm(hv, VmState.CREATED, name=b"POST_RT_VM1")
    assert inject_msi(hv, rt, 0xFEE00000, 0x30) == -1  # severity above the Service VM's


def test_set_irqline_levels_and_pit_mapping(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.RUNNING)
    assert hv.hypercall(uapi.HC_SET_IRQLINE, vmid, uapi.irqline_value(2, uapi.GSI_SET_HIGH)) == 0
    vm = hv.vm(vmid)
    assert vm is not None and vm.pic_lines == {0: 1} and vm.ioapic_lines == {2: 1}
    assert hv.hypercall(uapi.HC_SET_IRQLINE, vmid, uapi.irqline_value(20, uapi.GSI_FALLING_PULSE)) == 0
    assert vm.ioapic_lines[20] == 1 and 20 not in vm.pic_lines
    assert hv.hypercall(uapi.HC_SET_IRQLINE, vmid, uapi.irqline_value(4, 9)) == 0  # unknown op: no-op
    assert 4 not in vm.ioapic_lines


def test_set_irqline_gsi_bound(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.RUNNING)
    assert hv.hypercall(uapi.HC_SET_IRQLINE, vmid, uapi.irqline_value(47, 0)) == 0
    assert hv.hypercall(uapi.HC_SET_IRQLINE, vmid, uapi.irqline_value(48, 0)) == -1


def test_vm_intr_monitor_rules(hv: Hypervisor) -> None:
    assert hv.hypercall(uapi.HC_VM_INTR_MONITOR, 1, Buf().addr) == EINVAL  # powered off
    vmid = make_vm(hv, VmState.RUNNING)
    page = Buf()
    words = (ctypes.c_uint64 * 49).from_address(page.addr)
    words[0] = uapi.INTR_CMD_DELAY_INT | (1 << 32)
    words[1] = 25
    assert hv.hypercall(uapi.HC_VM_INTR_MONITOR, vmid, page.addr) == 0
    assert hv.vm(vmid).intr_inject_delay_ms == 25  # type: ignore[union-attr]
    words[0] = uapi.INTR_CMD_GET_DATA | (49 << 32)
    assert hv.hypercall(uapi.HC_VM_INTR_MONITOR, vmid, page.addr) == EINVAL  # buf_cnt > 48
    words[0] = 7
    assert hv.hypercall(uapi.HC_VM_INTR_MONITOR, vmid, page.addr) == EINVAL  # unknown cmd
    words[0] = uapi.INTR_CMD_GET_DATA | (48 << 32)
    assert hv.hypercall(uapi.HC_VM_INTR_MONITOR, vmid, page.addr) == 0
    assert words[0] >> 32 == 0  # no passthrough interrupts: nothing written


# --- passthrough and vdevs -------------------------------------------------------------------
def pcidev_call(hv: Hypervisor, hc: int, vmid: int, virt: int = 0x0018, phys: int = 0x00A0) -> int:
    dev = uapi.acrn_pcidev(type=uapi.ACRN_PTDEV_QUIRK_ASSIGN, virt_bdf=virt, phys_bdf=phys)
    with hv.memory.kernel_copy(bytes(dev)) as kc:
        return hv.hypercall(hc, vmid, kc.gpa)


def ptdev_call(hv: Hypervisor, hc: int, vmid: int, virt_pin: int = 5, pic: int = 0, type: int = 0) -> int:
    irq = uapi.acrn_ptdev_irq(type=type, virt_bdf=0x0018, phys_bdf=0x00A0)
    irq.intx.virt_pin, irq.intx.phys_pin, irq.intx.is_pic_pin = virt_pin, 16, pic
    with hv.memory.kernel_copy(bytes(irq)) as kc:
        return hv.hypercall(hc, vmid, kc.gpa)


def test_assign_pcidev_needs_created(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.PAUSED)
    assert pcidev_call(hv, uapi.HC_ASSIGN_PCIDEV, vmid) == EINVAL


def test_assign_pcidev_records_and_refuses_unknown_or_taken(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert pcidev_call(hv, uapi.HC_ASSIGN_PCIDEV, vmid) == 0
    assert 0x0018 in hv.vm(vmid).pcidevs  # type: ignore[union-attr]
    assert pcidev_call(hv, uapi.HC_ASSIGN_PCIDEV, vmid, virt=0x20) == ENODEV  # already given away
    assert pcidev_call(hv, uapi.HC_ASSIGN_PCIDEV, vmid, phys=0x0300) == ENODEV  # no such device


def test_deassign_pcidev_allowed_when_paused_not_running(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert pcidev_call(hv, uapi.HC_ASSIGN_PCIDEV, vmid) == 0
    assert hv.hypercall(uapi.HC_START_VM, vmid) == 0
    assert pcidev_call(hv, uapi.HC_DEASSIGN_PCIDEV, vmid) == EINVAL
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    assert pcidev_call(hv, uapi.HC_DEASSIGN_PCIDEV, vmid, phys=0x0100) == ENODEV  # wrong phys BDF
    assert pcidev_call(hv, uapi.HC_DEASSIGN_PCIDEV, vmid) == 0
    assert hv.vm(vmid).pcidevs == {}  # type: ignore[union-attr]


def test_set_ptdev_intr_rules(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert ptdev_call(hv, uapi.HC_SET_PTDEV_INTR, vmid) == -1  # no assigned device
    assert pcidev_call(hv, uapi.HC_ASSIGN_PCIDEV, vmid) == 0
    assert ptdev_call(hv, uapi.HC_SET_PTDEV_INTR, vmid, type=uapi.ACRN_PTDEV_IRQ_MSI) == -1
    assert ptdev_call(hv, uapi.HC_SET_PTDEV_INTR, vmid, virt_pin=48) == -1
    assert ptdev_call(hv, uapi.HC_SET_PTDEV_INTR, vmid, virt_pin=16, pic=1) == -1
    assert ptdev_call(hv, uapi.HC_SET_PTDEV_INTR, vmid, virt_pin=5) == 0
    assert [e.virt_pin for e in hv.vm(vmid).ptdev_intx] == [5]  # type: ignore[union-attr]
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    assert ptdev_call(hv, uapi.HC_SET_PTDEV_INTR, vmid) == -1  # SET needs CREATED
    assert ptdev_call(hv, uapi.HC_RESET_PTDEV_INTR, vmid) == 0  # RESET allows PAUSED
    assert hv.vm(vmid).ptdev_intx == []  # type: ignore[union-attr]


def vdev_call(hv: Hypervisor, hc: int, vmid: int, dev_id: int, slot: int = 0x0020) -> int:
    dev = uapi.acrn_vdev(slot=slot)
    dev.id.value = dev_id
    with hv.memory.kernel_copy(bytes(dev)) as kc:
        return hv.hypercall(hc, vmid, kc.gpa)


MCS9900 = 0x9710 | (0x9900 << 16)


def test_create_vdev_table_lookup(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert vdev_call(hv, uapi.HC_CREATE_VDEV, vmid, 0x12345678) == EINVAL
    assert vdev_call(hv, uapi.HC_CREATE_VDEV, vmid, 0x1AF4 | (0x1110 << 16)) == EINVAL  # ivshmem not built in
    assert vdev_call(hv, uapi.HC_CREATE_VDEV, vmid, MCS9900) == 0
    assert vdev_call(hv, uapi.HC_CREATE_VDEV, vmid, 0x8086 | (0x9D14 << 16), slot=0x28) == 0
    assert sorted(hv.vm(vmid).vdevs) == [0x20, 0x28]  # type: ignore[union-attr]


def test_vdev_state_rules(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert vdev_call(hv, uapi.HC_CREATE_VDEV, vmid, MCS9900) == 0
    assert hv.hypercall(uapi.HC_START_VM, vmid) == 0
    assert vdev_call(hv, uapi.HC_CREATE_VDEV, vmid, MCS9900, slot=0x30) == EINVAL
    assert vdev_call(hv, uapi.HC_DESTROY_VDEV, vmid, MCS9900) == EINVAL
    assert hv.hypercall(uapi.HC_PAUSE_VM, vmid) == 0
    assert vdev_call(hv, uapi.HC_DESTROY_VDEV, vmid, MCS9900, slot=0x10030) == EINVAL  # no vdev at 00:06.0
    assert vdev_call(hv, uapi.HC_DESTROY_VDEV, vmid, MCS9900, slot=0x10020) == 0  # BDF = low 16 bits


def mmiodev_call(hv: Hypervisor, hc: int, vmid: int, host: int = 0xFED90000, size: int = 0x1000) -> int:
    dev = uapi.acrn_mmiodev()
    dev.res[0].user_vm_pa, dev.res[0].service_vm_pa, dev.res[0].size = 0xFED90000, host, size
    with hv.memory.kernel_copy(bytes(dev)) as kc:
        return hv.hypercall(hc, vmid, kc.gpa)


def test_mmiodev_state_rules(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.RUNNING)
    assert mmiodev_call(hv, uapi.HC_ASSIGN_MMIODEV, vmid) == EINVAL
    vm2 = make_vm(hv)
    assert mmiodev_call(hv, uapi.HC_ASSIGN_MMIODEV, vm2) == 0
    assert mmiodev_call(hv, uapi.HC_DEASSIGN_MMIODEV, vm2) == 0
    assert mmiodev_call(hv, uapi.HC_DEASSIGN_MMIODEV, vm2) == EINVAL


# --- PM_GET_CPU_STATE --------------------------------------------------------------------------
def pm(hv: Hypervisor, vmid: int, typ: int, state: int = 0, out: int = 48) -> tuple[int, bytes]:
    with hv.memory.kernel_copy(bytes(out)) as kc:
        return hv.hypercall(uapi.HC_PM_GET_CPU_STATE, uapi.pm_cmd(vmid, 0, state, typ), kc.gpa), kc.contents()


def test_pm_target_comes_from_command_word(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert pm(hv, vmid, uapi.ACRN_PMCMD_GET_CX_CNT)[0] == 0
    assert pm(hv, 15, uapi.ACRN_PMCMD_GET_CX_CNT)[0] == ENOTTY  # pre-launched
    assert pm(hv, 2, uapi.ACRN_PMCMD_GET_CX_CNT)[0] == -1  # powered off


def test_pm_rejects_running_vm(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.RUNNING)
    assert pm(hv, vmid, uapi.ACRN_PMCMD_GET_CX_CNT)[0] == -1


def test_pm_cx_count_and_data(hv: Hypervisor) -> None:
    vmid = make_vm(hv, VmState.PAUSED)
    ret, out = pm(hv, vmid, uapi.ACRN_PMCMD_GET_CX_CNT, out=8)
    assert (ret, out[0], out[1:]) == (0, 3, bytes(7))  # one byte written
    assert pm(hv, vmid, uapi.ACRN_PMCMD_GET_CX_DATA, state=0)[0] == -1
    assert pm(hv, vmid, uapi.ACRN_PMCMD_GET_CX_DATA, state=4)[0] == -1
    ret, out = pm(hv, vmid, uapi.ACRN_PMCMD_GET_CX_DATA, state=2)
    data = uapi.acrn_cstate_data.from_buffer_copy(out[:32])
    assert ret == 0 and data.type == 2 and out[32:] == bytes(16)


def test_pm_px_rules(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    assert pm(hv, vmid, uapi.ACRN_PMCMD_GET_PX_CNT)[0] == -1  # no vHWP, no P-state passthrough
    assert pm(hv, vmid, uapi.ACRN_PMCMD_GET_PX_DATA)[0] == -1
    assert pm(hv, vmid, 9)[0] == -1
    hv.vm_configs[13].vhwp = True
    std = make_vm(hv, name=b"POST_STD_VM1")
    assert pm(hv, std, uapi.ACRN_PMCMD_GET_PX_CNT) == (0, bytes(48))


def test_gpa2hpa_translates_through_ept(hv: Hypervisor) -> None:
    vmid = make_vm(hv)
    ram = Buf()
    assert regions(hv, vmid, [(uapi.MR_ADD, RWX_WB, 0x5000, ram.addr, 0x1000)]) == 0
    with hv.memory.kernel_copy((0x5123).to_bytes(8, "little") + bytes(8)) as kc:
        assert hv.hypercall(uapi.HC_VM_GPA2HPA, vmid, kc.gpa) == 0
        assert int.from_bytes(kc.contents()[8:], "little") == ram.addr + 0x123
    with hv.memory.kernel_copy((0x9000).to_bytes(8, "little") + bytes(8)) as kc:
        assert hv.hypercall(uapi.HC_VM_GPA2HPA, vmid, kc.gpa) == -1
