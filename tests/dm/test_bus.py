"""IoBus: registration, dispatch by first byte, unclaimed accesses (all-ones, dropped, counted)."""

from __future__ import annotations

import pytest

from acrn.dm.bus import IoBus


class Recorder:
    """A device that remembers writes and answers reads with offset-derived values."""

    def __init__(self, value: int = 0x12345678) -> None:
        self.value = value
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return self.value + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


def test_pio_read_goes_to_device_with_offset_from_range_start() -> None:
    bus, dev = IoBus(), Recorder(0x40)
    bus.register_pio(0x3F8, 8, dev)
    assert bus.pio_read(0x3FD, 1) == 0x45
    assert dev.reads == [(5, 1)]


def test_pio_write_goes_to_device_masked_to_size() -> None:
    bus, dev = IoBus(), Recorder()
    bus.register_pio(0x70, 2, dev)
    bus.pio_write(0x71, 1, 0x1FF)
    assert dev.writes == [(1, 1, 0xFF)]


def test_read_result_is_masked_to_access_size() -> None:
    bus = IoBus()
    bus.register_pio(0x80, 1, Recorder(0xABCDEF))
    assert bus.pio_read(0x80, 2) == 0xCDEF


def test_unhandled_pio_read_returns_all_ones_for_the_size() -> None:
    bus = IoBus()
    assert bus.pio_read(0x1234, 1) == 0xFF
    assert bus.pio_read(0x1234, 2) == 0xFFFF
    assert bus.pio_read(0x1234, 4) == 0xFFFFFFFF


def test_unhandled_mmio_read_returns_all_ones_for_the_size() -> None:
    bus = IoBus()
    assert bus.mmio_read(0xFEE00000, 8) == 0xFFFFFFFFFFFFFFFF
    assert bus.mmio_read(0xFEE00000, 4) == 0xFFFFFFFF


def test_unhandled_accesses_are_counted_per_port() -> None:
    bus = IoBus()
    bus.pio_read(0x61, 1)
    bus.pio_read(0x61, 1)
    bus.pio_write(0x80, 1, 0)
    bus.mmio_write(0xC0000000, 4, 123)
    assert bus.unhandled_pio_reads[0x61] == 2
    assert bus.unhandled_pio_writes[0x80] == 1
    assert bus.unhandled_mmio_writes[0xC0000000] == 1
    assert "unhandled PIO read at 0x61: 2" in bus.unhandled_report()


def test_try_variants_report_unclaimed_accesses() -> None:
    bus = IoBus()
    bus.register_pio(0x60, 1, Recorder(7))
    assert bus.try_pio_read(0x60, 1) == 7
    assert bus.try_pio_read(0x64, 1) is None
    assert bus.try_pio_write(0x60, 1, 1) is True
    assert bus.try_pio_write(0x64, 1, 1) is False


def test_overlapping_pio_registration_raises_value_error() -> None:
    bus = IoBus()
    bus.register_pio(0x3F8, 8, Recorder())
    with pytest.raises(ValueError, match="overlaps"):
        bus.register_pio(0x3FF, 1, Recorder())
    with pytest.raises(ValueError, match="overlaps"):
        bus.register_pio(0x3F0, 9, Recorder())


def test_overlapping_mmio_registration_raises_value_error() -> None:
    bus = IoBus()
    bus.register_mmio(0xFED00000, 0x1000, Recorder())
    with pytest.raises(ValueError, match="overlaps"):
        bus.register_mmio(0xFECFF000, 0x2000, Recorder())


def test_adjacent_ranges_do_not_overlap() -> None:
    bus, a, b = IoBus(), Recorder(0x10), Recorder(0x20)
    bus.register_pio(0x60, 4, a)
    bus.register_pio(0x64, 1, b)
    bus.register_pio(0x5F, 1, Recorder())
    assert bus.pio_read(0x63, 1) == 0x13
    assert bus.pio_read(0x64, 1) == 0x20


def test_access_dispatches_on_its_first_byte() -> None:
    # A 4-byte access that starts in the last port of a range still goes to that range's device.
    bus, dev = IoBus(), Recorder()
    bus.register_pio(0xF4, 1, dev)
    bus.pio_write(0xF4, 4, 0xAABBCCDD)
    assert dev.writes == [(0, 4, 0xAABBCCDD)]


def test_registration_rejects_empty_or_out_of_space_ranges() -> None:
    bus = IoBus()
    with pytest.raises(ValueError):
        bus.register_pio(0x100, 0, Recorder())
    with pytest.raises(ValueError):
        bus.register_pio(0xFFFF, 2, Recorder())


def test_bad_access_size_raises_value_error() -> None:
    bus = IoBus()
    with pytest.raises(ValueError):
        bus.pio_read(0x80, 8)
    with pytest.raises(ValueError):
        bus.mmio_read(0x1000, 3)


def test_unregister_frees_the_range() -> None:
    bus, dev = IoBus(), Recorder(5)
    bus.register_pio(0x70, 2, dev)
    assert bus.unregister_pio(0x70) is dev
    assert bus.pio_read(0x70, 1) == 0xFF
    bus.register_pio(0x70, 2, Recorder())
    with pytest.raises(KeyError):
        bus.unregister_mmio(0x70)
