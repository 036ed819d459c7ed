"""i8042: the reset command and enough of the controller for Linux's probe."""

from __future__ import annotations

from acrn.dm.bus import IoBus
from acrn.dm.devices.i8042 import I8042, STS_OBF, STS_SYS


def _dev() -> tuple[I8042, IoBus, list[int]]:
    resets: list[int] = []
    dev = I8042(on_reset=lambda: resets.append(1))
    bus = IoBus()
    dev.attach(bus)
    return dev, bus, resets


def test_command_fe_on_port_64_pulses_reset() -> None:
    dev, bus, resets = _dev()
    bus.pio_write(0x64, 1, 0xFE)
    assert resets == [1] and dev.resets == 1


def test_data_port_fe_is_not_a_reset() -> None:
    _, bus, resets = _dev()
    bus.pio_write(0x60, 1, 0xFE)
    assert resets == []


def test_output_port_write_with_reset_line_low_resets() -> None:
    _, bus, resets = _dev()
    bus.pio_write(0x64, 1, 0xD1)
    bus.pio_write(0x60, 1, 0xDE)
    assert resets == [1]
    bus.pio_write(0x64, 1, 0xD1)
    bus.pio_write(0x60, 1, 0xDF)
    assert resets == [1]


def test_self_test_answers_55_through_output_buffer() -> None:
    _, bus, _ = _dev()
    assert not bus.pio_read(0x64, 1) & STS_OBF
    bus.pio_write(0x64, 1, 0xAA)
    assert bus.pio_read(0x64, 1) & (STS_OBF | STS_SYS) == STS_OBF | STS_SYS
    assert bus.pio_read(0x60, 1) == 0x55
    assert not bus.pio_read(0x64, 1) & STS_OBF


def test_command_byte_read_and_write() -> None:
    _, bus, _ = _dev()
    bus.pio_write(0x64, 1, 0x60)
    bus.pio_write(0x60, 1, 0x47)
    bus.pio_write(0x64, 1, 0x20)
    assert bus.pio_read(0x60, 1) == 0x47


def test_keyboard_acks_and_identifies() -> None:
    _, bus, _ = _dev()
    bus.pio_write(0x60, 1, 0xF2)
    assert [bus.pio_read(0x60, 1) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    bus.pio_write(0x60, 1, 0xFF)
    assert [bus.pio_read(0x60, 1) for _ in range(2)] == [0xFA, 0xAA]


def test_keyboard_byte_pulses_irq1_when_enabled() -> None:
    lines: list[tuple[int, bool]] = []
    dev = I8042(irq=lambda n, lvl: lines.append((n, lvl)))
    dev.feed(b"\x1c")
    assert lines == [(1, True), (1, False)]
    assert dev.port_read(0x60) == 0x1C
