"""PCI config space on a running guest: the kernel's CF8/CFC combiner and acrn.dm's host bridge
(``drivers/virt/acrn/ioreq.c: handle_cf8cfc``).

``pci_probe`` reports, in order: host bridge dword 0, class dword 8, the device ID by a word read at
0xCFE, an absent device, 0xCF8 read back, a data-port read with the enable bit clear, the command
register after a write, and the same after a write with the enable bit clear.
"""

from __future__ import annotations

import pytest

from acrn.dm.pci import PCIR_DEVICE, PciBus
from acrn.emu.machine import Machine

from .surface_support import ACCELS, machine_fixture, session

machine = pytest.fixture(params=ACCELS)(machine_fixture)

HOSTBRIDGE_ID, CLASS, DEVICE_ID, ABSENT, CF8, DISABLED, COMMAND, COMMAND_AFTER = range(8)


class RecordingPci:
    """Wraps the session's PCI bus and records every PCICFG request the device model receives."""

    def __init__(self, inner: PciBus) -> None:
        self.inner = inner
        self.accesses: list[tuple[str, int, int, int, int, int]] = []

    def cfg_read(self, bus: int, dev: int, func: int, reg: int, size: int) -> int | None:
        self.accesses.append(("r", bus, dev, func, reg, size))
        return self.inner.cfg_read(bus, dev, func, reg, size)

    def cfg_write(self, bus: int, dev: int, func: int, reg: int, size: int, value: int) -> None:
        self.accesses.append(("w", bus, dev, func, reg, size))
        self.inner.cfg_write(bus, dev, func, reg, size, value)


def probe(machine: Machine, device_id: int | None = None) -> tuple[list[int], RecordingPci, object]:
    s, reports = session(machine, "pci_probe")
    with s:
        if device_id is not None:
            s.hostbridge.set(PCIR_DEVICE, 2, device_id)
        rec = RecordingPci(s.pci)
        s.pci = rec  # type: ignore[assignment]
        result = s.run(timeout=30)
        assert result.reason == "halt", result.summary()
        assert len(reports.values) == 8, reports.values
        return reports.values, rec, s.bus


def test_guest_reads_host_bridge_vendor_and_device(machine: Machine) -> None:
    values, _, _ = probe(machine)
    assert values[HOSTBRIDGE_ID] == 0x12751275  # acrn-dm hostbridge.c


def test_guest_reads_host_bridge_class_code(machine: Machine) -> None:
    values, _, _ = probe(machine)
    assert values[CLASS] == 0x06000000


def test_data_port_offset_becomes_the_low_register_bits(machine: Machine) -> None:
    # A word read at 0xCFE with reg 0 selected is register 2: the device ID (handle_cf8cfc).
    values, rec, _ = probe(machine, device_id=0xABCD)
    assert values[DEVICE_ID] == 0xABCD
    assert ("r", 0, 0, 0, 2, 2) in rec.accesses


def test_absent_device_reads_all_ones(machine: Machine) -> None:
    values, rec, _ = probe(machine)
    assert values[ABSENT] == 0xFFFFFFFF
    assert ("r", 0, 1, 0, 0, 4) in rec.accesses  # it did reach the device model, as PCICFG


def test_cf8_is_kept_and_read_back_by_the_kernel(machine: Machine) -> None:
    values, _, bus = probe(machine)
    assert values[CF8] == 0x00001234
    assert bus.unhandled_pio_reads[0xCF8] == 0 and bus.unhandled_pio_writes[0xCF8] == 0  # type: ignore[attr-defined]


def test_data_port_with_enable_clear_reads_all_ones_in_the_kernel(machine: Machine) -> None:
    values, rec, _ = probe(machine)
    assert values[DISABLED] == 0xFFFFFFFF
    # Six reads and one write had the enable bit set; the rest never left the kernel.
    assert [a[0] for a in rec.accesses] == ["r", "r", "r", "r", "w", "r", "r"]


def test_config_write_reaches_the_host_bridge(machine: Machine) -> None:
    values, rec, _ = probe(machine)
    assert ("w", 0, 0, 0, 4, 2) in rec.accesses
    assert values[COMMAND] == 0x0010077F  # status (capability list) | writable command bits


def test_data_port_write_with_enable_clear_is_dropped_in_the_kernel(machine: Machine) -> None:
    values, rec, _ = probe(machine)
    assert values[COMMAND_AFTER] == values[COMMAND]
    assert [a for a in rec.accesses if a[0] == "w"] == [("w", 0, 0, 0, 4, 2)]


def test_device_model_never_sees_the_raw_config_ports(machine: Machine) -> None:
    _, _, bus = probe(machine)
    for port in range(0xCF8, 0xD00):
        assert bus.unhandled_pio_reads[port] == 0 and bus.unhandled_pio_writes[port] == 0  # type: ignore[attr-defined]
