"""acrn.dm.devices.i8254: the PIT and port B, driven by a fake monotonic clock."""

from __future__ import annotations

import time

from acrn.dm.bus import IoBus
from acrn.dm.devices.i8254 import I8254, PIT_HZ

NS = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.ns = 10 * NS

    def __call__(self) -> int:
        return self.ns

    def ticks(self, n: int) -> None:
        self.ns += -(-n * NS // PIT_HZ)


def make() -> tuple[I8254, IoBus, Clock, list[int]]:
    clock, irqs = Clock(), []
    pit = I8254(irq=lambda: irqs.append(clock.ns), clock=clock)
    bus = IoBus()
    pit.attach(bus)
    return pit, bus, clock, irqs


def out(bus: IoBus, port: int, value: int) -> None:
    bus.pio_write(port, 1, value)


def inb(bus: IoBus, port: int) -> int:
    return bus.pio_read(port, 1)


def test_channel2_mode0_counts_down_and_raises_out2_like_linux_calibration() -> None:
    _pit, bus, clock, _ = make()
    out(bus, 0x61, (inb(bus, 0x61) & ~0x02) | 0x01)  # gate 2 on, speaker off (pit_calibrate_tsc)
    out(bus, 0x43, 0xB0)  # channel 2, LSB then MSB, mode 0
    out(bus, 0x42, 0xA9)
    out(bus, 0x42, 0x04)  # 1193 ticks: about 1 ms
    assert inb(bus, 0x61) & 0x21 == 0x01  # gate on, OUT2 low while counting
    clock.ticks(100)
    lo, hi = inb(bus, 0x42), inb(bus, 0x42)
    assert (hi << 8 | lo) == 1193 - 100
    clock.ticks(1093)
    assert inb(bus, 0x61) & 0x20  # terminal count: OUT2 high
    assert inb(bus, 0x61) & 0xC0 == 0


def test_gate2_low_pauses_mode0() -> None:
    _pit, bus, clock, _ = make()
    out(bus, 0x43, 0xB0)
    out(bus, 0x42, 0x00)
    out(bus, 0x42, 0x01)  # 256 with the gate still off (its reset state)
    clock.ticks(1000)
    assert inb(bus, 0x61) & 0x21 == 0
    lo, hi = inb(bus, 0x42), inb(bus, 0x42)
    assert (hi << 8 | lo) == 256
    out(bus, 0x61, 0x01)
    clock.ticks(256)
    assert inb(bus, 0x61) & 0x20


def test_counter_latch_holds_the_value_while_time_passes() -> None:
    _pit, bus, clock, _ = make()
    out(bus, 0x43, 0x34)  # channel 0, LSB/MSB, mode 2
    out(bus, 0x40, 0x9C)
    out(bus, 0x40, 0x2E)  # 11932: 100 Hz
    clock.ticks(32)
    out(bus, 0x43, 0x00)  # latch channel 0
    clock.ticks(500)
    lo, hi = inb(bus, 0x40), inb(bus, 0x40)
    assert (hi << 8 | lo) == 11932 - 32
    lo, hi = inb(bus, 0x40), inb(bus, 0x40)  # unlatched again: the live count
    assert (hi << 8 | lo) == 11932 - 532


def test_read_back_status_and_control_register_read() -> None:
    _pit, bus, _clock, _ = make()
    out(bus, 0x43, 0xB0)  # channel 2 mode 0, no count yet: null count, OUT low
    out(bus, 0x43, 0xE8)  # read-back, status only, channel 2
    assert inb(bus, 0x42) == 0x40 | 0x30
    assert inb(bus, 0x43) == 0xFF


def test_channel0_mode2_interrupts_every_period_and_coalesces_late_ones() -> None:
    pit, bus, clock, irqs = make()
    out(bus, 0x43, 0x34)
    out(bus, 0x40, 0xA9)
    out(bus, 0x40, 0x04)  # 1193 ticks
    nxt = pit.poll()
    assert irqs == [] and nxt is not None
    clock.ns = nxt
    pit.poll()
    assert len(irqs) == 1
    clock.ticks(1193 * 5)  # five periods missed: one interrupt, not five
    pit.poll()
    assert len(irqs) == 2


def test_channel0_mode0_interrupts_once() -> None:
    pit, bus, clock, irqs = make()
    out(bus, 0x43, 0x30)
    out(bus, 0x40, 0x10)
    out(bus, 0x40, 0x00)
    clock.ticks(20)
    assert pit.poll() is None
    clock.ticks(100_000)
    pit.poll()
    assert len(irqs) == 1


def test_port_b_keeps_the_speaker_bit_and_toggles_refresh() -> None:
    _pit, bus, clock, _ = make()
    out(bus, 0x61, 0x03)
    assert inb(bus, 0x61) & 0x03 == 0x03
    seen = set()
    for _ in range(4):
        clock.ns += 15_085
        seen.add(inb(bus, 0x61) & 0x10)
    assert seen == {0, 0x10}


def test_thread_delivers_periodic_interrupts_and_stops() -> None:
    irqs: list[float] = []
    pit = I8254(irq=lambda: irqs.append(time.monotonic()))
    bus = IoBus()
    pit.attach(bus)
    pit.start()
    try:
        out(bus, 0x43, 0x34)
        out(bus, 0x40, 0xA9)
        out(bus, 0x40, 0x04)  # 1 kHz
        time.sleep(0.2)
    finally:
        pit.close()
    n = len(irqs)
    assert 20 <= n <= 210, n
    time.sleep(0.02)
    assert len(irqs) == n
