"""The PCI bus and host bridge of the device model (acrn-dm pci_cfgrw and hostbridge.c rules)."""

from __future__ import annotations

import pytest

from acrn import uapi
from acrn.dm.bus import IoBus
from acrn.dm.devices.pci_host import HOSTBRIDGE_DEVICE, HOSTBRIDGE_VENDOR, PciHostBridge
from acrn.dm.ioreq_loop import PCI_INVALID, IoreqLoop
from acrn.dm.pci import PciBus, PciConfigSpace


@pytest.fixture
def bus() -> PciBus:
    b = PciBus()
    PciHostBridge().attach(b)
    return b


def test_host_bridge_answers_vendor_and_device_at_00_00_0(bus: PciBus) -> None:
    assert bus.cfg_read(0, 0, 0, 0x00, 4) == HOSTBRIDGE_VENDOR | HOSTBRIDGE_DEVICE << 16 == 0x12751275
    assert bus.cfg_read(0, 0, 0, 0x00, 2) == HOSTBRIDGE_VENDOR
    assert bus.cfg_read(0, 0, 0, 0x02, 2) == HOSTBRIDGE_DEVICE


def test_host_bridge_is_class_bridge_host_with_type0_header(bus: PciBus) -> None:
    assert bus.cfg_read(0, 0, 0, 0x08, 4) == 0x06000000  # class 06, subclass 00, prog-if 0, rev 0
    assert bus.cfg_read(0, 0, 0, 0x0E, 1) == 0x00


def test_host_bridge_has_a_pcie_root_port_capability(bus: PciBus) -> None:
    assert bus.cfg_read(0, 0, 0, 0x06, 2) & 0x10  # status: capability list present
    ptr = bus.cfg_read(0, 0, 0, 0x34, 1)
    assert ptr == 0x40
    assert bus.cfg_read(0, 0, 0, ptr, 1) == 0x10  # PCI Express
    assert bus.cfg_read(0, 0, 0, ptr + 1, 1) == 0  # last capability
    assert bus.cfg_read(0, 0, 0, ptr + 2, 2) == 0x42  # version 2, root port


@pytest.mark.parametrize("bdf", [(0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 31, 7)])
def test_absent_function_reads_none_so_the_slot_gets_all_ones(bus: PciBus, bdf: tuple[int, int, int]) -> None:
    assert bus.cfg_read(*bdf, 0, 4) is None


def test_write_to_absent_function_is_dropped(bus: PciBus) -> None:
    bus.cfg_write(0, 1, 0, 0x04, 2, 0x7)
    assert bus.cfg_read(0, 1, 0, 0x04, 2) is None


@pytest.mark.parametrize(("reg", "size"), [(0x01, 2), (0x02, 4), (0x03, 2), (0x00, 3), (0x00, 8), (0x100, 4)])
def test_unaligned_odd_sized_or_extended_access_reads_all_ones(bus: PciBus, reg: int, size: int) -> None:
    assert bus.cfg_read(0, 0, 0, reg, size) is None


def test_unaligned_write_is_dropped(bus: PciBus) -> None:
    bus.cfg_write(0, 0, 0, 0x3D, 2, 0xABCD)
    assert bus.cfg_read(0, 0, 0, 0x3C, 4) == 0


def test_command_register_keeps_read_only_bits(bus: PciBus) -> None:
    bus.cfg_write(0, 0, 0, 0x04, 4, 0xFFFFFFFF)
    # command bits 0-6 and 8-10 are writable; the status word stays as it was
    assert bus.cfg_read(0, 0, 0, 0x04, 2) == 0x077F
    assert bus.cfg_read(0, 0, 0, 0x06, 2) == 0x0010


def test_status_word_write_changes_nothing(bus: PciBus) -> None:
    bus.cfg_write(0, 0, 0, 0x06, 2, 0xFFFF)
    assert bus.cfg_read(0, 0, 0, 0x06, 2) == 0x0010


def test_bars_and_rom_of_a_function_without_them_read_zero(bus: PciBus) -> None:
    for reg in (0x10, 0x14, 0x24, 0x30):
        bus.cfg_write(0, 0, 0, reg, 4, 0xFFFFFFFF)
        assert bus.cfg_read(0, 0, 0, reg, 4) == 0


def test_capability_id_and_next_pointer_are_read_only(bus: PciBus) -> None:
    bus.cfg_write(0, 0, 0, 0x40, 1, 0x05)
    bus.cfg_write(0, 0, 0, 0x41, 1, 0x80)
    assert bus.cfg_read(0, 0, 0, 0x40, 2) == 0x0010
    # a dword write over the header keeps only its upper half (acrn-dm pci_emul_capwrite)
    bus.cfg_write(0, 0, 0, 0x40, 4, 0x1234FFFF)
    assert bus.cfg_read(0, 0, 0, 0x40, 4) == 0x12340010


def test_other_header_writes_are_stored_as_acrn_dm_does(bus: PciBus) -> None:
    # acrn-dm has no read-only mask for the rest of the header (not even the IDs).
    bus.cfg_write(0, 0, 0, 0x3C, 1, 0x0B)
    assert bus.cfg_read(0, 0, 0, 0x3C, 1) == 0x0B
    bus.cfg_write(0, 0, 0, 0x00, 2, 0x8086)
    assert bus.cfg_read(0, 0, 0, 0x00, 2) == 0x8086


def test_bus_refuses_a_taken_or_invalid_address() -> None:
    b = PciBus()
    PciHostBridge().attach(b)
    with pytest.raises(ValueError):
        PciHostBridge().attach(b)
    with pytest.raises(ValueError):
        b.add(0, 32, 0, PciConfigSpace())
    with pytest.raises(ValueError):
        b.add(0, 0, 8, PciConfigSpace())


def test_ioreq_loop_answers_pcicfg_through_the_host_bridge(bus: PciBus) -> None:
    class Client:
        vcpu_num = 2

        def __init__(self) -> None:
            self.buf = uapi.acrn_io_request_buffer()
            self.notified: list[int] = []

        def ioreq_buffer(self) -> uapi.acrn_io_request_buffer:
            return self.buf

        def attach(self) -> None:
            raise OSError(19, "destroyed")

        def notify_request_finish(self, vcpu: int) -> None:
            self.notified.append(vcpu)

    c = Client()
    for i, dev in enumerate((0, 3)):
        slot = c.buf.req_slot[i]
        slot.type = uapi.ACRN_IOREQ_TYPE_PCICFG
        slot.processed = uapi.ACRN_IOREQ_STATE_PROCESSING
        r = slot.reqs.pci_request
        r.direction, r.size, r.dev, r.reg = uapi.ACRN_IOREQ_DIR_READ, 4, dev, 0
    assert IoreqLoop(c, IoBus(), pci=bus).scan() == 2
    assert c.buf.req_slot[0].reqs.pci_request.value == 0x12751275
    assert c.buf.req_slot[1].reqs.pci_request.value == PCI_INVALID
    assert c.notified == [0, 1]
