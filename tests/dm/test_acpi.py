"""ACPI tables (RSDP/XSDT/FADT/MADT/DSDT) and the PM registers they describe (S5 power-off)."""

from __future__ import annotations

import struct

import pytest

from acrn.dm import acpi
from acrn.dm.bus import IoBus
from acrn.dm.devices.acpi_pm import AcpiPm
from acrn.dm.loaders import MemoryLayout, MiB, SparseMemory


def test_every_table_checksums_to_zero() -> None:
    for gpa, data in acpi.acpi_tables(2).items():
        if data[:4] != b"FACS":
            assert sum(data[:20] if gpa == acpi.RSDP_GPA else data) % 256 == 0, hex(gpa)
    assert sum(acpi.rsdp()) % 256 == 0  # extended checksum


def test_rsdp_at_acrn_dm_base_in_bios_search_area_points_to_xsdt() -> None:
    r = acpi.rsdp()
    assert acpi.RSDP_GPA == 0xF2400 and acpi.RSDP_GPA % 16 == 0 and 0xE0000 <= acpi.RSDP_GPA < 0x100000
    assert r[:8] == b"RSD PTR " and r[15] == 2 and struct.unpack_from("<Q", r, 24)[0] == acpi.XSDT_GPA


def test_xsdt_lists_fadt_and_madt() -> None:
    x = acpi.xsdt([acpi.FADT_GPA, acpi.MADT_GPA])
    assert struct.unpack_from("<2Q", x, 36) == (acpi.FADT_GPA, acpi.MADT_GPA)


def test_madt_one_lapic_per_cpu_ioapic_and_pit_override() -> None:
    m = acpi.madt(3)
    assert struct.unpack_from("<I", m, 36)[0] == 0xFEE00000
    off, lapics, ioapic, overrides = 44, [], None, []
    while off < len(m):
        kind, length = m[off], m[off + 1]
        if kind == 0:
            lapics.append(m[off + 3])
        elif kind == 1:
            ioapic = struct.unpack_from("<I", m, off + 4)[0]
        elif kind == 2:
            overrides.append((m[off + 3], struct.unpack_from("<I", m, off + 4)[0]))
        off += length
    assert lapics == [0, 1, 2] and ioapic == 0xFEC00000 and (0, 2) in overrides


def test_fadt_publishes_pm_ports_and_dsdt() -> None:
    f = acpi.fadt()
    assert f[:4] == b"FACP" and len(f) == acpi.FADT_LENGTH
    assert struct.unpack_from("<II", f, 36) == (0, acpi.DSDT_GPA)
    assert struct.unpack_from("<Q", f, 132)[0] == acpi.FACS_GPA
    assert struct.unpack_from("<H", f, 46)[0] == 9
    assert struct.unpack_from("<I", f, 64)[0] == 0x404 and f[89] == 2
    assert struct.unpack_from("<Q", f, 140)[0] == acpi.DSDT_GPA


def test_dsdt_s5_package_gives_slp_typ_5() -> None:
    d = acpi.dsdt()
    assert d[36:] == bytes([0x08, *b"_S5_", 0x12, 0x05, 0x02, 0x0A, 0x05, 0x00])


def test_tables_install_into_guest_memory() -> None:
    mem = SparseMemory(MemoryLayout(16 * MiB))
    acpi.install_acpi_tables(mem, 1)
    assert mem.read(0xF2400, 8) == b"RSD PTR "


def test_madt_cpu_count_bounds() -> None:
    with pytest.raises(ValueError):
        acpi.acpi_tables(0)


def _pm() -> tuple[AcpiPm, IoBus, list[str]]:
    events: list[str] = []
    dev = AcpiPm(on_poweroff=lambda: events.append("off"), on_reset=lambda: events.append("reset"))
    bus = IoBus()
    dev.attach(bus)
    return dev, bus, events


def test_pm1_control_slp_typ_5_with_slp_en_powers_off() -> None:
    _, bus, events = _pm()
    bus.pio_write(0x404, 2, 5 << 10)  # SLP_TYP without SLP_EN: nothing
    assert events == []
    bus.pio_write(0x404, 2, (5 << 10) | (1 << 13))
    assert events == ["off"]
    assert bus.pio_read(0x404, 2) & (1 << 13) == 0  # SLP_EN is write-only


def test_other_sleep_types_do_not_power_off() -> None:
    _, bus, events = _pm()
    bus.pio_write(0x404, 2, (3 << 10) | (1 << 13))
    assert events == []


def test_smi_cmd_enables_and_disables_sci() -> None:
    _, bus, _ = _pm()
    bus.pio_write(0xB2, 1, 0xA0)
    assert bus.pio_read(0x404, 2) & 1
    bus.pio_write(0xB2, 1, 0xA1)
    assert not bus.pio_read(0x404, 2) & 1


def test_pm_timer_counts_at_3_579545_mhz() -> None:
    now = [100.0]
    dev = AcpiPm(clock=lambda: now[0])
    bus = IoBus()
    dev.attach(bus)
    t0 = bus.pio_read(0x408, 4)
    now[0] += 1.0
    assert (bus.pio_read(0x408, 4) - t0) & 0xFFFFFFFF == 3579545


def test_pm1_status_is_write_one_to_clear_and_enable_is_rw() -> None:
    dev, bus, _ = _pm()
    dev.pm1_status = 0x0101
    bus.pio_write(0x400, 2, 0x0100)
    assert bus.pio_read(0x400, 2) == 0x0001
    bus.pio_write(0x402, 2, 0x0120)
    assert bus.pio_read(0x402, 2) == 0x0120


def test_reset_register_cf9_rst_cpu_resets() -> None:
    _, bus, events = _pm()
    bus.pio_write(0xCF9, 1, 0x02)
    assert events == []
    bus.pio_write(0xCF9, 1, 0x06)
    assert events == ["reset"]
