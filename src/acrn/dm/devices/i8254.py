"""The i8254 PIT at ports 0x40-0x43 and port B (0x61), clocked by the host's monotonic clock.

On ACRN the PIT of a User VM is the device model's (acrn-dm: ``hw/platform/pit.c``; the
hypervisor has none, docs/differences.md "The PIT").  pyacrn's device model uses this one when
the platform's ``pit_owner`` is ``"device-model"``; by default KVM's in-kernel PIT answers instead.

What is modelled (what Linux uses: ``arch/x86/kernel/i8253.c``, ``tsc.c: pit_calibrate_tsc``,
``quick_pit_calibrate``, ``drivers/clocksource/i8253.c``):

* three counters at 1,193,182 Hz, binary counting (the BCD bit is kept in the status but
  ignored, as acrn-dm does), modes 0-5, access LSB / MSB / LSB-then-MSB, the counter-latch
  command and the read-back command (status and count);
* the count takes effect when its last byte is written (``0`` means 65,536); the counter is then
  derived from the time elapsed since, so reads need no thread;
* channel 2's gate is bit 0 of port B; gate low pauses modes 0 and 4, and a rising edge restarts
  modes 1, 2, 3 and 5; channels 0 and 1 are always gated on;
* port B reads: bit 0 gate 2, bit 1 speaker data (stored, no sound), bit 4 the refresh-request
  toggle (every 15 us), bit 5 OUT2; bits 7:6 (NMI sources) read 0.  acrn-dm's own port B gives
  only OUT2 and ignores writes; KVM's speaker stub gives the same bits as here;
* channel 0's rising OUT edges raise IRQ 0 through ``irq()`` (acrn-dm: ``vm_set_gsi_irq(GSI 2,
  RAISING_PULSE)``): once at terminal count in modes 0/1/4/5, every period in modes 2/3.  A
  thread started with :meth:`start` delivers them; late ticks are coalesced, not replayed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from acrn.dm.bus import IoBus

BASE_PORT: Final = 0x40
PORT_B: Final = 0x61
PIT_HZ: Final = 1_193_182
PIT_IRQ: Final = 0
#: The GSI that ISA IRQ 0 arrives on: the MADT's interrupt source override 0 -> 2 (acrn-dm
#: ``include/pit.h`` PIT_IOAPIC_IRQ; ACRN mirrors GSI 2 onto PIC pin 0).
PIT_GSI: Final = 2
#: Port B bits.
PORT_B_GATE2: Final = 0x01
PORT_B_SPEAKER: Final = 0x02
PORT_B_REFRESH: Final = 0x10
PORT_B_OUT2: Final = 0x20
REFRESH_PERIOD_NS: Final = 15_085

_NS: Final = 1_000_000_000


class _Counter:
    """One counter; every method is called with the PIT's lock held."""

    def __init__(self, gate: bool) -> None:
        self.mode = 0
        self.access = 3  # LSB then MSB
        self.bcd = False
        self.reload = 0x10000
        self.loaded = False  # a count has been written since the last control word
        self.gate = gate
        self.base_ticks = 0  # ticks counted before ``since`` (gate-paused modes)
        self.since: int | None = None  # monotonic ns counting (re)started; None: not counting
        self.write_msb_next = False
        self.write_lsb = 0
        self.read_msb_next = False
        self.latched: list[int] = []  # bytes still to read from a counter latch
        self.status: int | None = None  # a latched status byte (read-back)

    # ---------------------------------------------------------------- time
    def ticks(self, now: int) -> int:
        if self.since is None:
            return self.base_ticks
        return self.base_ticks + (now - self.since) * PIT_HZ // _NS

    def count(self, now: int) -> int:
        if not self.loaded:
            return 0
        t, n = self.ticks(now), self.reload
        if self.mode in (2, 6):
            return n - t % n
        if self.mode in (3, 7):
            return (n - (2 * t) % n) & 0xFFFF
        return (n - t) & 0xFFFF

    def out(self, now: int) -> bool:
        if not self.loaded:
            return self.mode != 0  # after a control word: low in mode 0, high otherwise
        t, n = self.ticks(now), self.reload
        if self.mode == 0 or self.mode == 1:
            return t >= n
        if self.mode in (2, 6):
            return t % n != n - 1
        if self.mode in (3, 7):
            return t % n < (n + 1) // 2
        return t != n  # modes 4 and 5: one low tick at terminal count

    def next_edge(self, after: int) -> int | None:
        """Monotonic ns of the first rising OUT edge later than ``after`` (None if there is none).

        Channel 0's interrupt: terminal count in modes 0/1, the end of every period in modes 2/3,
        the tick after terminal count in modes 4/5.
        """
        if not self.loaded or self.since is None:
            return None
        t, n = max(0, self.ticks(after)), self.reload
        if self.mode in (0, 1):
            target = n if t < n else None
        elif self.mode in (2, 3, 6, 7):
            target = (t // n + 1) * n
        else:
            target = n + 1 if t <= n else None
        if target is None:
            return None
        return self.since + -(-(target - self.base_ticks) * _NS // PIT_HZ)

    # ---------------------------------------------------------------- gate
    def set_gate(self, level: bool, now: int) -> None:
        if level == self.gate:
            return
        if level:
            if self.mode in (0, 4):
                self.since = now  # resume where it paused
            else:
                self.base_ticks, self.since = 0, now  # rising edge: (re)trigger
        elif self.mode in (0, 4) and self.since is not None:
            self.base_ticks, self.since = self.ticks(now), None  # pause
        elif self.mode in (2, 3, 6, 7):
            self.base_ticks, self.since = 0, None  # stopped until the next rising edge
        self.gate = level

    # ---------------------------------------------------------------- programming
    def control(self, value: int) -> None:
        self.access = (value >> 4) & 3
        self.mode = (value >> 1) & 7
        self.bcd = bool(value & 1)
        self.loaded = False
        self.since = None
        self.base_ticks = 0
        self.write_msb_next = self.read_msb_next = False
        self.latched = []

    def latch(self, now: int) -> None:
        if self.latched:
            return  # a second latch before the first was read is ignored
        value = self.count(now)
        lo, hi = value & 0xFF, (value >> 8) & 0xFF
        self.latched = {1: [lo], 2: [hi], 3: [lo, hi]}.get(self.access, [lo, hi])

    def status_byte(self, now: int) -> int:
        out = 0x80 if self.out(now) else 0
        null = 0 if self.loaded else 0x40
        return out | null | (self.access << 4) | (self.mode << 1) | int(self.bcd)

    def write(self, value: int, now: int) -> None:
        value &= 0xFF
        if self.access == 1:
            self._load(value, now)
        elif self.access == 2:
            self._load(value << 8, now)
        elif self.access == 3:
            if self.write_msb_next:
                self._load(self.write_lsb | (value << 8), now)
            else:
                self.write_lsb = value
            self.write_msb_next = not self.write_msb_next

    def _load(self, value: int, now: int) -> None:
        self.reload = value or 0x10000
        self.loaded = True
        self.base_ticks = 0
        # Modes 1 and 5 wait for a gate edge; the others start counting now if gated on.
        self.since = now if self.gate and self.mode not in (1, 5) else None

    def read(self, now: int) -> int:
        if self.status is not None:
            value, self.status = self.status, None
            return value
        if self.latched:
            return self.latched.pop(0)
        value = self.count(now)
        if self.access == 1:
            return value & 0xFF
        if self.access == 2:
            return (value >> 8) & 0xFF
        byte = (value >> 8) & 0xFF if self.read_msb_next else value & 0xFF
        self.read_msb_next = not self.read_msb_next
        return byte


class I8254:
    """The PIT.  ``irq()`` pulses IRQ 0; ``clock()`` gives monotonic nanoseconds (for tests)."""

    def __init__(
        self, irq: Callable[[], None] | None = None, clock: Callable[[], int] = time.monotonic_ns
    ) -> None:
        self._irq = irq
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.counters = [_Counter(gate=True), _Counter(gate=True), _Counter(gate=False)]
        self.speaker = False
        self._thread: threading.Thread | None = None
        self._stop = False
        self._last_poll = clock()

    def attach(self, bus: IoBus) -> None:
        bus.register_pio(BASE_PORT, 4, self)
        bus.register_pio(PORT_B, 1, PortB(self))

    # ---------------------------------------------------------------- bus device (0x40-0x43)
    def read(self, offset: int, size: int) -> int:
        if offset == 3:
            return 0xFF  # the control word register is write-only
        with self._lock:
            return self.counters[offset].read(self._clock())

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            now = self._clock()
            if offset < 3:
                self.counters[offset].write(value, now)
            else:
                self._control(value & 0xFF, now)
            self._wake.notify()

    def _control(self, value: int, now: int) -> None:
        select = value >> 6
        if select == 3:  # read-back: bit 5 clear = latch counts, bit 4 clear = latch status
            for i in range(3):
                if value & (2 << i):
                    c = self.counters[i]
                    if not value & 0x20:
                        c.latch(now)
                    if not value & 0x10 and c.status is None:
                        c.status = c.status_byte(now)
            return
        c = self.counters[select]
        if (value >> 4) & 3 == 0:
            c.latch(now)
        else:
            c.control(value)

    # ---------------------------------------------------------------- port B
    def read_port_b(self) -> int:
        with self._lock:
            now = self._clock()
            c2 = self.counters[2]
            value = PORT_B_GATE2 if c2.gate else 0
            value |= PORT_B_SPEAKER if self.speaker else 0
            value |= PORT_B_REFRESH if (now // REFRESH_PERIOD_NS) & 1 else 0
            value |= PORT_B_OUT2 if c2.out(now) else 0
            return value

    def write_port_b(self, value: int) -> None:
        with self._lock:
            self.counters[2].set_gate(bool(value & PORT_B_GATE2), self._clock())
            self.speaker = bool(value & PORT_B_SPEAKER)

    # ---------------------------------------------------------------- channel 0's interrupt
    def poll(self) -> int | None:
        """Raise IRQ 0 once if channel 0 passed a rising edge since the last poll (edges that came
        closer together than the polls are coalesced, as a late interrupt would be); returns the
        next edge's time.  :meth:`start`'s thread calls it; tests call it with their own clock.
        """
        with self._lock:
            now = self._clock()
            c0 = self.counters[0]
            edge = c0.next_edge(self._last_poll)
            fire = edge is not None and edge <= now
            self._last_poll = now
            nxt = c0.next_edge(now)
        if fire and self._irq is not None:
            self._irq()  # outside the lock: the callback issues an ioctl
        return nxt

    def start(self) -> None:
        """Start the thread that delivers channel 0's interrupts."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="i8254", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            nxt = self.poll()
            with self._lock:
                if self._stop:
                    return
                timeout = None if nxt is None else max(0.0, (nxt - self._clock()) / _NS)
                self._wake.wait(timeout)
                if self._stop:
                    return


class PortB:
    """Port 0x61 as a bus device of its own (one port, away from the PIT's range)."""

    def __init__(self, pit: I8254) -> None:
        self.pit = pit

    def read(self, offset: int, size: int) -> int:
        return self.pit.read_port_b()

    def write(self, offset: int, size: int, value: int) -> None:
        self.pit.write_port_b(value)
